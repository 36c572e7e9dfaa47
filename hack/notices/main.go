// Command notices writes THIRD_PARTY_NOTICES: the licence texts of every Go module linked
// into the given packages (default ./modules/..., the modules the collection's binary
// holds), read from the module cache, and of the Go toolchain whose runtime and standard
// library every binary contains. `make collection` ships the file in the collection.
//
// usage: go run ./hack/notices [-o FILE] [PACKAGE...]
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	out := flag.String("o", "-", "output file (- for stdout)")
	flag.Parse()
	pkgs := flag.Args()
	if len(pkgs) == 0 {
		pkgs = []string{"./modules/..."}
	}
	text, err := Generate(pkgs)
	if err != nil {
		fmt.Fprintf(os.Stderr, "notices: %v\n", err)
		os.Exit(1)
	}
	var w io.Writer = os.Stdout
	if *out != "-" {
		if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "notices: %v\n", err)
			os.Exit(1)
		}
		f, err := os.Create(*out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "notices: %v\n", err)
			os.Exit(1)
		}
		defer f.Close()
		w = f
	}
	if _, err := io.WriteString(w, text); err != nil {
		fmt.Fprintf(os.Stderr, "notices: %v\n", err)
		os.Exit(1)
	}
}

// isLicenseFile tells the files of a module's root that carry its licence terms.
func isLicenseFile(name string) bool {
	n := strings.ToUpper(name)
	for _, p := range []string{"LICENSE", "LICENCE", "COPYING", "NOTICE", "PATENTS", "UNLICENSE"} {
		if n == p || strings.HasPrefix(n, p+".") || strings.HasPrefix(n, p+"-") || strings.HasPrefix(n, p+"_") {
			return true
		}
	}
	return false
}

// licenseFiles returns the licence files at the root of dir, sorted (ReadDir sorts).
func licenseFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		if e.Type().IsRegular() && isLicenseFile(e.Name()) {
			files = append(files, e.Name())
		}
	}
	return files, nil
}
