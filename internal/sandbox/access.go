package sandbox

import (
	"fmt"
	"os"
	"strings"
)

// loopbackTrust are the first lines of the database's pg_hba.conf: like the real
// flightctl-db image, PostgreSQL trusts TCP connections from inside its own container
// (127.0.0.1, ::1), which is how upstream's backup runs pg_dump with an empty password.
// Connections through the published port arrive from the container network's gateway and
// still need a password, as on a quadlet host.
const loopbackTrust = "# as the flightctl-db image: connections from inside the container are trusted\n" +
	"host all all 127.0.0.1/32 trust\n" +
	"host all all ::1/128 trust\n"

// trustLoopback puts loopbackTrust before the rules initdb wrote (the first match wins),
// keeping the file's owner and mode.
func trustLoopback(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("database access rules: %w", err)
	}
	if strings.Contains(string(b), loopbackTrust) {
		return nil
	}
	if err := os.WriteFile(path, append([]byte(loopbackTrust), b...), 0o600); err != nil {
		return fmt.Errorf("database access rules: %w", err)
	}
	return nil
}
