package restore

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// diskFullAdvice is the advice DiskFullAdvice adds; its first words mark an error that
// already carries it.
const diskFullAdvice = "a file system filled up during the restore"

// DiskFullAdvice adds what to do to the error of a restore that ran out of space ("no space
// left on device", from this process or from psql): the database needs room for a second
// copy of itself in its data directory until the swap; the archive's files are staged
// beside the live ones (liveDirs); the PAM volume and the journal go to stateDir, which
// state_dir moves. Other errors are returned as they are.
func DiskFullAdvice(err error, stateDir string, liveDirs ...string) error {
	if err == nil || !(errors.Is(err, syscall.ENOSPC) || strings.Contains(strings.ToLower(err.Error()), "no space left on device")) {
		return err
	}
	if strings.Contains(err.Error(), diskFullAdvice) {
		return err
	}
	seen := map[string]bool{}
	var dirs []string
	for _, d := range liveDirs {
		if d != "" && !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	where := "beside the live files"
	if len(dirs) > 0 {
		where = "beside the live files (" + strings.Join(dirs, ", ") + ")"
	}
	return fmt.Errorf("%w; %s: the database server needs room in its data directory for a second copy of the database until the swap, "+
		"the archive's files are staged %s, the PAM volume and the journal go to state_dir (%s). "+
		"Free space there (df -h shows each file system), or set state_dir to a directory with room, then run the restore again",
		err, diskFullAdvice, where, stateDir)
}
