// Package version carries the build's version: the collection release it belongs to and
// the source revision it was built from, both stamped by the Makefile.
package version

import "strings"

// Version is the source revision (git describe), set with
// -ldflags "-X flightctl.dr/internal/version.Version=...".
var Version = "0.0.0-dev"

// Collection is the flightctl.dr collection release this build belongs to (galaxy.yml's
// version, or the release tag), set with -ldflags "-X flightctl.dr/internal/version.Collection=...".
// The default is kept equal to galaxy.yml's by a test, so that a plain go build reports it too.
var Collection = "0.1.0"

// String is what the version command prints: the collection release, and the source
// revision beside it unless that is the release's own tag.
func String() string {
	rev := strings.TrimPrefix(Version, "v")
	if rev == Collection {
		return Collection
	}
	return Collection + " (build " + Version + ")"
}

// ServerRelease is the Flight Control server release this build is made for: the release
// whose archive format, schema and device-preparation rules it follows. The Red Hat
// runbooks compare `flightctl-backup version` and `flightctl-restore version` with the
// server's release, so the upstream-named commands print it first. Set with -ldflags
// "-X flightctl.dr/internal/version.ServerRelease=..." (the Makefile's FLIGHTCTL_RELEASE).
var ServerRelease = "v1.4.0"

// Upstream is what `flightctl-backup version` and `flightctl-restore version` print after
// upstream's "Flight Control ... Version: ": the server release first, so that the
// runbooks' comparison with `flightctl version` works, then flightctl.dr's own version.
func Upstream() string {
	return ServerRelease + " (flightctl.dr " + String() + ")"
}
