package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Module is one linked module as go list reports it.
type Module struct {
	Path, Version, Dir string
}

// LinkedModules lists the modules (not the main one) that provide packages linked into
// pkgs, with the directory of the version in use (a replacement's, if any).
func LinkedModules(pkgs []string) ([]Module, error) {
	args := append([]string{"list", "-deps", "-f",
		"{{with .Module}}{{if not .Main}}{{.Path}}\t{{.Version}}\t{{.Dir}}{{with .Replace}}\t{{.Path}}\t{{.Version}}\t{{.Dir}}{{end}}{{end}}{{end}}"}, pkgs...)
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go list: %v: %s", err, strings.TrimSpace(stderr.String()))
	}
	seen := map[string]Module{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Split(line, "\t")
		if len(f) < 3 {
			continue
		}
		m := Module{Path: f[0], Version: f[1], Dir: f[2]}
		if len(f) == 6 {
			m.Version, m.Dir = f[4], f[5]
			if m.Version == "" {
				m.Version = "(replaced by " + f[3] + ")"
			}
		}
		seen[m.Path] = m
	}
	mods := make([]Module, 0, len(seen))
	for _, m := range seen {
		mods = append(mods, m)
	}
	sort.Slice(mods, func(i, j int) bool { return mods[i].Path < mods[j].Path })
	return mods, nil
}

// Generate returns the notices text for pkgs. A linked module without a licence file is an
// error: the notices must cover everything the binaries contain.
func Generate(pkgs []string) (string, error) {
	mods, err := LinkedModules(pkgs)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	b.WriteString("THIRD-PARTY NOTICES\n\n")
	b.WriteString("The flightctl.dr binaries (plugins/module_binaries/flightctl_dr_linux_*) are built with Go and\n")
	b.WriteString("statically link the Go runtime and standard library and the Go modules listed below.\n")
	b.WriteString("Each one's licence terms follow, as its source distribution ships them.\n\n")
	b.WriteString("Modules:\n")
	goroot, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOROOT: %v", err)
	}
	gover, err := exec.Command("go", "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOVERSION: %v", err)
	}
	toolchain := Module{Path: "Go (runtime and standard library)", Version: strings.TrimSpace(string(gover)), Dir: strings.TrimSpace(string(goroot))}
	all := append([]Module{toolchain}, mods...)
	for _, m := range all {
		fmt.Fprintf(&b, "  %s %s\n", m.Path, m.Version)
	}
	var missing []string
	for _, m := range all {
		files, err := licenseFiles(m.Dir)
		if err != nil {
			return "", fmt.Errorf("module %s: %v (is it downloaded? run go mod download)", m.Path, err)
		}
		if len(files) == 0 {
			missing = append(missing, m.Path)
			continue
		}
		for _, name := range files {
			text, err := os.ReadFile(filepath.Join(m.Dir, name))
			if err != nil {
				return "", fmt.Errorf("module %s: %v", m.Path, err)
			}
			fmt.Fprintf(&b, "\n%s\n%s %s: %s\n%s\n\n", strings.Repeat("=", 78), m.Path, m.Version, name, strings.Repeat("-", 78))
			b.Write(bytes.TrimRight(text, "\n"))
			b.WriteString("\n")
		}
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("no licence file found for %s: add its terms by hand before shipping", strings.Join(missing, ", "))
	}
	return b.String(), nil
}
