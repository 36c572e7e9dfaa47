package cli

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"flightctl.dr/internal/ansiblemod"
)

// ansiballzPrefix starts the name Ansible gives a module binary it copied to the target
// (<tmp>/AnsiballZ_<module>); it runs it with one argument, the arguments file <tmp>/args.
const ansiballzPrefix = "AnsiballZ_"

// ansibleArgsName is the name Ansible gives the arguments file.
const ansibleArgsName = "args"

// moduleMode tells whether this run is Ansible's: the binary runs as a module, whatever
// the arguments file holds, when Ansible named it (AnsiballZ_*), or when its one argument
// is a file named as Ansible names it, or one that holds a JSON object (possibly after
// white space or a byte order mark, so that a file Ansible could not have written still
// gets one JSON object saying what is wrong with it). Anything an operator passes (an
// archive, a directory, a flag) is a command line.
func moduleMode(argv0 string, args []string) bool {
	if strings.HasPrefix(filepath.Base(argv0), ansiballzPrefix) {
		return true
	}
	return len(args) == 1 && isArgsFile(args[0])
}

// argsPeek bounds how much of a candidate arguments file is read to tell it from an
// archive: white space before the object counts, so a generous window.
const argsPeek = 1 << 20

func isArgsFile(path string) bool {
	if strings.HasPrefix(path, "-") {
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return false
	}
	if filepath.Base(path) == ansibleArgsName {
		return true
	}
	// Read until the first byte that is not white space (an archive's first), at most
	// argsPeek bytes.
	r := io.LimitReader(f, argsPeek)
	buf := make([]byte, 4096)
	first := true
	for {
		n, err := r.Read(buf)
		chunk := buf[:n]
		if first {
			chunk = bytes.TrimPrefix(chunk, []byte("\xef\xbb\xbf"))
			first = n == 0
		}
		if rest := bytes.TrimLeft(chunk, " \t\r\n"); len(rest) > 0 {
			return rest[0] == '{'
		}
		if err != nil {
			return false
		}
	}
}

// badModuleInvocation explains a module run that has not exactly one argument.
func badModuleInvocation(args []string) string {
	if len(args) == 0 {
		return "run as an Ansible module without an arguments file: Ansible passes exactly one argument, the path of the file holding the task's parameters"
	}
	return "run as an Ansible module with " + strconv.Itoa(len(args)) + " arguments: Ansible passes exactly one, the path of the file holding the task's parameters"
}

// absolutePaths makes the path options given on a command line absolute against the
// working directory, where the operator meant them; a module refuses relative ones (Ansible
// runs it in a temporary directory).
func absolutePaths[T any](options map[string]any) {
	specs, err := ansiblemod.Specs(new(T))
	if err != nil {
		return
	}
	for _, s := range specs {
		if !s.AbsPath {
			continue
		}
		if p, ok := options[s.Name].(string); ok && p != "" && !filepath.IsAbs(p) {
			if abs, err := filepath.Abs(p); err == nil {
				options[s.Name] = abs
			}
		}
	}
}

// MulticallFailure explains why the collection's one binary (every module, picked by the
// last part of _ansible_module_name) ran none: name is what the arguments file asked for,
// modules what the binary holds, args its command line.
func MulticallFailure(name, modules string, args []string) string {
	if len(args) != 1 {
		return badModuleInvocation(args)
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return "read the module arguments file: " + err.Error()
	}
	if _, _, err := ansiblemod.ParseArgs(data); err != nil {
		return err.Error()
	}
	if name == "" {
		return "the arguments file names no module (_ansible_module_name): this binary runs the flightctl.dr modules (" + modules + ") through their action plugins; name the module in the task, as flightctl.dr.flightctl_backup"
	}
	return "this binary runs the flightctl.dr modules (" + modules + ") through their action plugins; it was asked for " + strconv.Quote(name)
}
