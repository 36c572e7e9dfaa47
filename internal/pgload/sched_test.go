package pgload

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestPostDataTasksLockTheirTables(t *testing.T) {
	for _, c := range []struct {
		sql    string
		tables []string
		shared bool
	}{
		{"CREATE INDEX idx_events_reason ON public.events USING btree (reason);", []string{"public.events"}, true},
		{"CREATE UNIQUE INDEX t_f3 ON public.t USING btree (public.f3((id)::integer));", []string{"public.t"}, true},
		{"CREATE INDEX p_i ON ONLY public.parted USING btree (k);", []string{"public.parted"}, true},
		{"ALTER TABLE ONLY public.events\n    ADD CONSTRAINT events_pkey PRIMARY KEY (org_id, name);", []string{"public.events"}, false},
		{`ALTER TABLE ONLY extra."Odd; Name" ADD CONSTRAINT "Odd; Name_pkey" PRIMARY KEY (k);`, []string{"*"}, false},
		{`CREATE INDEX "weird" ON extra."Odd; Name" USING btree (v);`, []string{"*"}, false},
		{"CREATE STATISTICS s ON a, b FROM public.t;", []string{"*"}, false},
	} {
		tables, shared := indexTables([]byte(c.sql))
		require.Equal(t, c.tables, tables, c.sql)
		require.Equal(t, c.shared, shared, c.sql)
	}
	require.Equal(t, []string{"public.t"}, triggerTables([]byte("CREATE TRIGGER t_trg BEFORE INSERT OR UPDATE OF body ON public.t FOR EACH ROW EXECUTE FUNCTION public.f2();")))
	require.Equal(t, []string{"*"}, triggerTables([]byte(`CREATE TRIGGER x AFTER INSERT ON extra."Odd; Name" FOR EACH ROW EXECUTE FUNCTION public.f2();`)))
	require.Equal(t, []string{"public.events", "public.organizations"},
		fkTables([]byte("ALTER TABLE ONLY public.events\n    ADD CONSTRAINT fk_events_organization FOREIGN KEY (org_id) REFERENCES public.organizations(id);")))
}

// The post-data scheduler hands out the longest piece first, skips pieces whose table a
// running piece holds in a conflicting mode, and lets index builds of one table share it.
func TestPostDataLongestFreeFirst(t *testing.T) {
	mk := func(name string, cost int64, shared bool, tables ...string) *task {
		return &task{pooled: true, parts: [][]byte{[]byte(name)}, cost: cost, shared: shared, tables: tables}
	}
	small := mk("small index", 10, true, "public.small")
	pkey := mk("big pkey", 1000, false, "public.big")
	idx1 := mk("big index 1", 1000, true, "public.big")
	idx2 := mk("big index 2", 1000, true, "public.big")
	mid := mk("mid index", 500, true, "public.mid")
	unknown := mk("unknown", 0, false, "*")
	pool := longestFirst([]*task{small, pkey, idx1, idx2, mid, unknown})
	name := func(p []*task) []string {
		var out []string
		for _, t := range p {
			out = append(out, string(t.parts[0]))
		}
		return out
	}
	require.Equal(t, []string{"big pkey", "big index 1", "big index 2", "mid index", "small index", "unknown"}, name(pool))

	tl := newTableLocks()
	take := func() string {
		i, wake := tl.pick(pool)
		if i < 0 {
			require.NotNil(t, wake)
			return ""
		}
		t := pool[i]
		pool = append(pool[:i], pool[i+1:]...)
		return string(t.parts[0])
	}
	require.Equal(t, "big pkey", take())
	// The table's indexes wait for its constraint: the next free pieces go first.
	require.Equal(t, "mid index", take())
	require.Equal(t, "small index", take())
	require.Equal(t, "", take(), "the unknown piece waits for everything else")
	tl.unlock(pkey.tables, false)
	require.Equal(t, "big index 1", take())
	require.Equal(t, "big index 2", take(), "two index builds share their table")
	tl.unlock(mid.tables, true)
	tl.unlock(small.tables, true)
	tl.unlock(idx1.tables, true)
	require.Equal(t, "", take(), "one index build still holds its table")
	tl.unlock(idx2.tables, true)
	require.Equal(t, "unknown", take())
	require.Empty(t, pool)
}
