package cli

import (
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/ansiblemod"
)

// --diff used to print the whole before and the whole after: every unchanged line twice.
func TestPrintDiffIsUnifiedEveryLineOnce(t *testing.T) {
	before := "db:\n  name: flightctl\n  port: 5432\nkv:\n  port: 6379\nservice:\n  baseUrl: https://old\n"
	after := "db:\n  name: flightctl\n  port: 5432\nkv:\n  port: 6379\nservice:\n  baseUrl: https://new\n"
	var buf bytes.Buffer
	PrintDiff(&buf, ansiblemod.Output{"diff": map[string]any{"before": before, "after": after}})
	got := buf.String()
	require.Equal(t, 1, strings.Count(got, "  port: 6379"), "context printed once: %s", got)
	require.NotContains(t, got, "name: flightctl", "lines far from the change are not repeated")
	require.Contains(t, got, "-  baseUrl: https://old\n+  baseUrl: https://new\n")
	require.True(t, strings.HasPrefix(got, "--- before\n+++ after\n@@ -"), got)
}

// The diff is checked by patch(1) where it exists, and by applying it here otherwise: any
// pair of texts must give a diff that turns the first into the second.
func TestUnifiedDiffAppliesToRandomTexts(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	words := []string{"a\n", "b\n", "c\n", "d\n", "e\n"}
	patch, _ := exec.LookPath("patch")
	for n := 0; n < 300; n++ {
		gen := func() string {
			var sb strings.Builder
			for i := rng.Intn(12); i > 0; i-- {
				sb.WriteString(words[rng.Intn(len(words))])
			}
			return sb.String()
		}
		a, b := gen(), gen()
		d := UnifiedDiff("a", "b", a, b, 1+rng.Intn(3))
		if a == b {
			require.Empty(t, d)
			continue
		}
		require.Equal(t, b, applyUnified(t, a, d), "diff of %q to %q:\n%s", a, b, d)
		if patch != "" && n%10 == 0 {
			dir := t.TempDir()
			f := filepath.Join(dir, "f")
			require.NoError(t, os.WriteFile(f, []byte(a), 0o600))
			cmd := exec.Command(patch, "-s", f)
			cmd.Stdin = strings.NewReader(d)
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "patch: %s\n%s", out, d)
			got, _ := os.ReadFile(f)
			require.Equal(t, b, string(got))
		}
	}
}

// applyUnified applies a unified diff that UnifiedDiff wrote (hunks in order).
func applyUnified(t *testing.T, a, d string) string {
	t.Helper()
	src := splitLines(a)
	var out []string
	pos := 0
	lines := splitLines(d)[2:]
	for k := 0; k < len(lines); k++ {
		l := lines[k]
		if strings.HasPrefix(l, "@@ ") {
			var sa, na, sb, nb int
			if _, err := fmt.Sscanf(l, "@@ -%d,%d +%d,%d @@", &sa, &na, &sb, &nb); err != nil {
				// single-line ranges: -N or -N,M forms mixed; read the start only
				fmt.Sscanf(strings.TrimPrefix(l, "@@ -"), "%d", &sa)
				if strings.HasPrefix(strings.Fields(l)[1], "-"+fmt.Sprint(sa)+",0") {
					sa++
				}
			} else if na == 0 {
				sa++
			}
			for pos < sa-1 {
				out = append(out, src[pos])
				pos++
			}
			continue
		}
		switch l[0] {
		case ' ':
			require.Equal(t, l[1:], src[pos])
			out = append(out, src[pos])
			pos++
		case '-':
			require.Equal(t, l[1:], src[pos])
			pos++
		case '+':
			out = append(out, l[1:])
		}
	}
	out = append(out, src[pos:]...)
	return strings.Join(out, "")
}
