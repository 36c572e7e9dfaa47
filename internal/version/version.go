// Package version carries the build's version, stamped by the Makefile from git.
package version

// Version is set with -ldflags "-X flightctl.dr/internal/version.Version=...".
var Version = "0.0.0-dev"
