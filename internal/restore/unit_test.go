package restore

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCopyCounterCountsRowsAcrossWrites(t *testing.T) {
	dump := strings.Join([]string{
		`SET statement_timeout = 0;`,
		`COPY public.devices (org_id, name, status) FROM stdin;`,
		`00000000-0000-0000-0000-000000000000	dev-1	{"a":"line\nwith escaped newline"}`,
		`00000000-0000-0000-0000-000000000000	dev-2	\N`,
		`\.`,
		`COPY public.device_labels (org_id, device_name) FROM stdin;`,
		`x	dev-1`,
		`\.`,
		`COPY public.enrollment_requests (org_id, name) FROM stdin;`,
		`\.`,
		`COPY "public"."fleets" (org_id, name) FROM stdin;`,
		`x	` + strings.Repeat("long", 10000),
		`\.`,
		`-- COPY public.devices (x) FROM stdin; in a comment is not a block`,
		``,
	}, "\n")
	// Feed it in awkward pieces: one byte, then odd-sized chunks.
	for _, chunk := range []int{1, 7, 4096, len(dump)} {
		c := newCopyCounter(CountedTables)
		for i := 0; i < len(dump); i += chunk {
			end := min(i+chunk, len(dump))
			_, _ = c.Write([]byte(dump[i:end]))
		}
		require.Equal(t, map[string]int64{"devices": 2, "fleets": 1, "enrollment_requests": 0}, c.Counts, "chunk %d", chunk)
	}
}

func TestPrivilegeSQLReproducesACL(t *testing.T) {
	sql, err := privilegeSQL("flightctl", DatabaseInfo{Owner: "admin", ACLSet: true,
		ACL: []string{"=Tc/admin", "admin=CTc/admin", "flightctl_app=c/admin", "flightctl_migrator=C*/admin", `"odd ""name"=c/admin`}})
	require.NoError(t, err)
	require.Equal(t, `ALTER DATABASE "flightctl" OWNER TO "admin";
REVOKE ALL ON DATABASE "flightctl" FROM PUBLIC;
REVOKE ALL ON DATABASE "flightctl" FROM "admin";
GRANT TEMPORARY, CONNECT ON DATABASE "flightctl" TO PUBLIC;
GRANT CREATE, TEMPORARY, CONNECT ON DATABASE "flightctl" TO "admin";
GRANT CONNECT ON DATABASE "flightctl" TO "flightctl_app";
GRANT CREATE ON DATABASE "flightctl" TO "flightctl_migrator" WITH GRANT OPTION;
GRANT CONNECT ON DATABASE "flightctl" TO "odd ""name";
`, sql)

	// Default privileges (datacl NULL): only the owner.
	sql, err = privilegeSQL("flightctl", DatabaseInfo{Owner: "admin"})
	require.NoError(t, err)
	require.Equal(t, "ALTER DATABASE \"flightctl\" OWNER TO \"admin\";\n", sql)

	_, err = privilegeSQL("flightctl", DatabaseInfo{ACLSet: true, ACL: []string{"app=X/admin"}})
	require.Error(t, err)
}

func TestValidDatabaseName(t *testing.T) {
	require.NoError(t, ValidDatabaseName("flightctl"))
	require.NoError(t, ValidDatabaseName("flightctl_restore_0a1b2c3d"))
	for _, bad := range []string{"", "a b", `x"y`, "x;drop", strings.Repeat("a", 64), "dbname=postgres"} {
		require.Error(t, ValidDatabaseName(bad), bad)
	}
}

// Every state a crash can leave between and around the two renames resumes to the swapped
// state, and every one of them rolls back to the original.
func TestFileSetSwapAndRollbackFromEveryState(t *testing.T) {
	type state struct {
		name                    string
		live, staged, old       string // "" = absent, else content
		wantAfterSwap, wantBack string
	}
	states := []state{
		{"before swap", "orig", "new", "", "new", "orig"},
		{"live moved aside", "", "new", "orig", "new", "orig"},
		{"swapped", "new", "", "orig", "new", "orig"},
	}
	for _, s := range states {
		t.Run(s.name, func(t *testing.T) {
			for _, op := range []string{"swap", "rollback"} {
				dir := t.TempDir()
				set := JournalFileSet{Name: "config", Live: filepath.Join(dir, "f"), HadLive: true}
				set.Staged, set.Old = stagedPath(set.Live, "id"), oldPath(set.Live, "id")
				for p, c := range map[string]string{set.Live: s.live, set.Staged: s.staged, set.Old: s.old} {
					if c != "" {
						require.NoError(t, os.WriteFile(p, []byte(c), 0o600))
					}
				}
				want := s.wantAfterSwap
				if op == "swap" {
					require.NoError(t, swapFileSet(set))
					require.NoError(t, swapFileSet(set), "a second swap is a no-op")
				} else {
					want = s.wantBack
					require.NoError(t, rollbackFileSet(set))
					require.NoError(t, rollbackFileSet(set), "a second rollback is a no-op")
				}
				b, err := os.ReadFile(set.Live)
				require.NoError(t, err)
				require.Equal(t, want, string(b), op)
				_, err = os.Stat(set.Staged)
				require.True(t, os.IsNotExist(err), "no staged copy left after %s", op)
				if op == "rollback" {
					_, err = os.Stat(set.Old)
					require.True(t, os.IsNotExist(err), "no old copy left after rollback")
				}
			}
		})
	}
}

func TestFileSetWithoutLiveCopy(t *testing.T) {
	dir := t.TempDir()
	set := JournalFileSet{Name: "encryption", Live: filepath.Join(dir, "enc"), HadLive: false}
	set.Staged, set.Old = stagedPath(set.Live, "id"), oldPath(set.Live, "id")
	require.NoError(t, os.Mkdir(set.Staged, 0o700))
	require.NoError(t, swapFileSet(set))
	require.DirExists(t, set.Live)
	require.NoError(t, rollbackFileSet(set))
	require.NoDirExists(t, set.Live, "a directory that did not exist before is removed on rollback")
}

func TestJournalSaveLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := newJournalStore(NewFileJournal(dir))
	j, err := s.load()
	require.NoError(t, err)
	require.Nil(t, j)
	in := &Journal{ID: "abc", ArchiveSHA256: "ff", State: StateRunning, ActiveUnits: []string{"a.service"}}
	in.markDone(StepStopUnits)
	in.markDone(StepStopUnits)
	require.NoError(t, s.save(in))
	out, err := s.load()
	require.NoError(t, err)
	require.Equal(t, []string{StepStopUnits}, out.Done)
	require.True(t, out.isDone(StepStopUnits))
	fi, err := os.Stat(s.path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	require.NoError(t, os.WriteFile(s.path, []byte("{broken"), 0o600))
	_, err = s.load()
	require.ErrorContains(t, err, "damaged")
}

// Check mode's msg is one sentence an operator can act on, whatever the plan holds.
func TestPlanSummary(t *testing.T) {
	p := &Plan{Database: &DatabasePlan{External: true}}
	require.Equal(t, "leave the database alone (external, or no dump in the archive: restore it with your database tools), then prepare the devices", p.Summary())

	p = &Plan{
		UnitsToStop: []string{"flightctl-api.service"},
		Database:    &DatabasePlan{Name: "flightctl", CountsArchive: map[string]int64{"devices": 3, "fleets": -1}},
		Files: []FileChanges{
			{Name: "pki", Added: []string{"a"}, Replaced: []string{}, Removed: []string{}, Unchanged: 0},
			{Name: "encryption", Unchanged: 1},
			{Name: "config", Unchanged: 1},
		},
		Volume: "flightctl-pam-issuer-etc",
	}
	require.Equal(t, "stop 1 unit (flightctl-api), create database flightctl from the archive (devices 3, fleets none), "+
		"replace pki (1 added), rewrite encryption and config (identical to the archive), re-import volume flightctl-pam-issuer-etc, "+
		"then prepare the devices and start the units again", p.Summary())
}

func TestPsqlKnowsRestrict(t *testing.T) {
	for v, want := range map[string]bool{
		"psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)": true,
		"psql (PostgreSQL) 15.13":                          false,
		"psql (PostgreSQL) 16.10":                          true,
		"psql (PostgreSQL) 17.5":                           false,
		"psql (PostgreSQL) 18.1":                           true,
		"psql (PostgreSQL) 12.22":                          false,
		"garbage":                                          false,
	} {
		require.Equal(t, want, psqlKnowsRestrict(v), v)
	}
}
