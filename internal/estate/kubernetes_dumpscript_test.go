package estate

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/testbed"
)

const dumpScriptPassword = "dump-Pässword '1"

// The script the database pod runs reports the byte count and sha256 of exactly what it
// wrote on stdout, with OpenSSL and GNU dd (the fast path) and without them (sha256sum
// and tee alone). Run here with sh against a real PostgreSQL; in the cluster tests the
// same script runs through pods/exec.
func TestDumpScriptReportsWhatItSent(t *testing.T) {
	testbed.Need(t, "pg_dump", "sha256sum", "mkfifo", "tee", "wc")
	pg := testbed.PostgresForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: dumpScriptPassword}))

	b := &KubernetesBackup{Config: KubernetesConfig{DBHost: pg.Host, DBPort: pg.Port, DBName: "flightctl"}}
	script := DumpScript(b.connShell("flightctl_app"))
	for _, fast := range []bool{true, false} {
		name := map[bool]string{true: "openssl-and-dd", false: "sha256sum-only"}[fast]
		t.Run(name, func(t *testing.T) {
			// openssl and dd are shadowed by wrappers that note each call and then run the
			// real program, or, for an image without them, fail.
			shadow := t.TempDir()
			for _, p := range []string{"openssl", "dd"} {
				body := "#!/bin/sh\necho >>" + filepath.Join(shadow, p+".calls") + "\n"
				if fast {
					real, err := exec.LookPath(p)
					if err != nil {
						t.Skipf("%s is not installed", p)
					}
					body += "exec " + real + ` "$@"` + "\n"
				} else {
					body += "exit 127\n"
				}
				require.NoError(t, os.WriteFile(filepath.Join(shadow, p), []byte(body), 0o755))
			}
			path := shadow + ":" + os.Getenv("PATH")
			var stdout, stderr bytes.Buffer
			cmd := exec.CommandContext(ctx, "sh", "-c", script)
			cmd.Env = append(os.Environ(), "PATH="+path)
			cmd.Stdin = strings.NewReader(dumpScriptPassword + "\n")
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			require.NoError(t, cmd.Run(), stderr.String())
			m := dumpTrailerRE.FindStringSubmatch(stderr.String())
			require.NotNil(t, m, stderr.String())
			assert.Equal(t, "0", m[1], "pg_dump's status")
			assert.Equal(t, "0", m[2], "tee's status")
			assert.Equal(t, strconv.Itoa(stdout.Len()), m[3])
			sum := sha256.Sum256(stdout.Bytes())
			assert.Equal(t, hex.EncodeToString(sum[:]), m[4])
			assert.True(t, DumpComplete(stdout.Bytes()[max(0, stdout.Len()-dumpTailKeep):]))
			// The probe, then (fast path) the run over the dump.
			for _, p := range []string{"openssl", "dd"} {
				calls, err := os.ReadFile(filepath.Join(shadow, p+".calls"))
				require.NoError(t, err, "%s was not tried", p)
				want := 1
				if fast {
					want = 2
				}
				assert.Equal(t, want, bytes.Count(calls, []byte("\n")), p)
			}
		})
	}
}
