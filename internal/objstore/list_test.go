package objstore

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/retention"
	"flightctl.dr/internal/testbed"
)

// TestListInRanges: a folder larger than a listing page is listed in parallel key
// ranges (pages of 10 keys here, so that a small folder makes many ranges) and comes
// back exactly as one listing of the folder gives it: every key once, in key order,
// whatever the density of the archives over time, with foreign names before, between
// and after them, nested names, markers and signatures; the ranges past the newest
// archive are not all asked for.
func TestListInRanges(t *testing.T) {
	m := testbed.MinIOForTest(t)
	s := newStore(t, m, "ranges", false, 5<<20)
	ctx := context.Background()
	var keys []string
	add := func(n string) { keys = append(keys, s.Key(estate, n)) }
	// Sparse years, then a dense month: the first page's density misleads the estimate.
	var when []time.Time
	for d := 0; d < 30; d++ {
		when = append(when, time.Date(2019, 1, 1, 0, 0, 0, 0, time.UTC).AddDate(0, 0, 40*d))
	}
	for h := 0; h < 120; h++ {
		when = append(when, time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(h)*time.Hour))
	}
	for i, w := range when {
		n := fmt.Sprintf("flightctl-backup-%s.tar.gz", w.Format("20060102T150405Z"))
		if i%7 == 3 {
			n += ".age"
		}
		add(n)
		if i%11 != 5 {
			add(n + ".sha256")
		}
		if i%3 == 0 {
			add(n + ".sig")
		}
	}
	for _, n := range []string{"a-notes.txt", "flightctl-backup-20200101T000000Z.tar.gz.sig", "flightctl-backup-x", "sub/flightctl-backup-20250601T000000Z.tar.gz", "zz.txt"} {
		add(n)
	}
	work := make(chan string)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range work {
				_, err := s.Client().PutObject(ctx, "ranges", k, bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{})
				assert.NoError(t, err)
			}
		}()
	}
	for _, k := range keys {
		work <- k
	}
	close(work)
	wg.Wait()
	sort.Strings(keys)
	// Another estate beside, whose keys never show.
	_, err := s.Client().PutObject(ctx, "ranges", s.Key("server-b", "flightctl-backup-20250601T000000Z.tar.gz"), bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{})
	require.NoError(t, err)

	for _, workers := range []int{1, 4} {
		s.pageSize, s.listWorkers = 10, workers
		listRequests.Store(0)
		got, err := s.listFolder(ctx, s.estatePrefix(estate))
		require.NoError(t, err)
		var names []string
		for _, o := range got {
			names = append(names, o.Key)
		}
		require.Equal(t, keys, names, "workers %d: every key once, in key order", workers)
		// One page of 10 per ~8.5 keys, plus the first page and a few tail requests;
		// far fewer than one per range up to now (64 ranges).
		t.Logf("workers %d: %d keys in %d requests", workers, len(keys), listRequests.Load())
		assert.Less(t, listRequests.Load(), int64(len(keys)/5), "requests")
	}

	// As retention sees it: the orphan signature, the foreign names, no nested name.
	list, err := s.List(ctx, estate)
	require.NoError(t, err)
	plan, err := retention.Make(retention.Policy{KeepLast: -1}, list, retention.Options{Now: time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)})
	require.NoError(t, err)
	assert.Len(t, plan.Decisions, len(when))
	assert.Equal(t, []string{"flightctl-backup-20200101T000000Z.tar.gz.sig"}, plan.OrphanSignatures)
	assert.Equal(t, []string{"a-notes.txt", "flightctl-backup-x", "zz.txt"}, plan.Ignored)
	signed := 0
	for _, d := range plan.Decisions {
		if d.Archive.Signed {
			signed++
		}
		assert.False(t, strings.Contains(d.Archive.Name, "/"))
	}
	assert.Equal(t, (len(when)+2)/3, signed)
}
