// Package roles tests task files of the collection's roles with the real ansible-playbook.
package roles

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/testbed"
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// runSeed includes offhost's seed.yml with the given variables and returns the facts it set.
func runSeed(t *testing.T, vars map[string]any) (map[string]any, string, error) {
	t.Helper()
	testbed.Need(t, "ansible-playbook")
	dir := t.TempDir()
	seed := filepath.Join(repoRoot(), "collection", "roles", "offhost", "tasks", "seed.yml")
	out := filepath.Join(dir, "facts.json")
	ev, err := json.Marshal(vars)
	require.NoError(t, err)
	// Play variables, as inventory and role defaults, rank below set_fact (-e would not).
	play := `- hosts: localhost
  gather_facts: false
  vars: ` + string(ev) + `
  tasks:
    - ansible.builtin.include_tasks: ` + seed + `
    - ansible.builtin.copy:
        dest: ` + out + `
        content: "{{ {'bucket': flightctl_dr_s3_bucket, 'prefix': flightctl_dr_s3_prefix, 'archive': flightctl_dr_restore_s3_archive,
                      'restore': flightctl_dr_restore_from_bucket, 'schedule': flightctl_dr_timer_schedule,
                      'enabled': flightctl_dr_timer_enabled, 'retention': flightctl_dr_retention} | to_json }}"
        mode: "0600"
`
	require.NoError(t, os.WriteFile(filepath.Join(dir, "play.yml"), []byte(play), 0o600))
	cmd := exec.Command("ansible-playbook", "-i", "localhost,", "-c", "local", filepath.Join(dir, "play.yml"))
	cmd.Env = append(os.Environ(), "ANSIBLE_NOCOLOR=1", "ANSIBLE_RETRY_FILES_ENABLED=0", "ANSIBLE_LOCALHOST_WARNING=0")
	b, err := cmd.CombinedOutput()
	if err != nil {
		return nil, string(b), err
	}
	raw, err := os.ReadFile(out)
	require.NoError(t, err)
	var facts map[string]any
	require.NoError(t, json.Unmarshal(raw, &facts), string(raw))
	return facts, string(b), nil
}

// The seed's block, as its backup configuration writes it, stands in for the variables.
func TestSeedBackupRestoreBlock(t *testing.T) {
	defaults := map[string]any{"flightctl_dr_s3_bucket": "", "flightctl_dr_s3_prefix": "", "flightctl_dr_retention": map[string]any{}, "flightctl_dr_timer_schedule": "", "flightctl_dr_timer_enabled": ""}
	with := func(extra map[string]any) map[string]any {
		m := map[string]any{}
		for k, v := range defaults {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	facts, out, err := runSeed(t, with(map[string]any{"backup_restore": map[string]any{
		"enabled": true, "restore": false, "schedule": "0 0 * * *", "bucketName": "rafay-backups",
		"retentionPeriod": "168h0m0s", "backupFolderName": "controller-backups",
	}}))
	require.NoError(t, err, out)
	assert.Equal(t, "rafay-backups", facts["bucket"])
	assert.Equal(t, "controller-backups", facts["prefix"])
	assert.Equal(t, "", facts["archive"])
	assert.Equal(t, false, facts["restore"])
	assert.Equal(t, "0 0 * * *", facts["schedule"])
	assert.Equal(t, true, facts["enabled"])
	assert.Equal(t, map[string]any{"keep_within": "168h0m0s"}, facts["retention"])

	// The restore form: backupFolderName names the archive; our own variables win.
	facts, out, err = runSeed(t, with(map[string]any{
		"flightctl_dr_s3_bucket": "ours", "flightctl_dr_retention": map[string]any{"keep_last": 3},
		"backup_restore": map[string]any{"enabled": false, "restore": true, "bucketName": "theirs", "retentionPeriod": "24h",
			"backupFolderName": "flightctl-backup-20261130T000000Z"},
	}))
	require.NoError(t, err, out)
	assert.Equal(t, "ours", facts["bucket"])
	assert.Equal(t, "", facts["prefix"])
	assert.Equal(t, "flightctl-backup-20261130T000000Z.tar.gz", facts["archive"])
	assert.Equal(t, true, facts["restore"])
	assert.Equal(t, false, facts["enabled"])
	assert.Equal(t, map[string]any{"keep_last": float64(3)}, facts["retention"])

	// A key the seed does not have is refused by name.
	_, out, err = runSeed(t, with(map[string]any{"backup_restore": map[string]any{"bucket": "x"}}))
	require.Error(t, err)
	assert.True(t, strings.Contains(out, "it takes enabled, restore, schedule, bucketName, retentionPeriod and backupFolderName only"), out)
}
