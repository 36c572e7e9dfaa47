package objstore

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/minio/minio-go/v7"

	"flightctl.dr/internal/retention"
)

// Listing an estate's folder.
//
// An estate's folder holds two or three keys per archive (the archive, its
// .sha256 marker, its .sig), and the names carry the time
// (flightctl-backup-YYYYMMDDTHHMMSSZ...), so that the keys sort by time. One
// listing of a large folder is many pages of 1,000 keys fetched one after the
// other; here the first page is fetched, and when there are more the rest of
// the folder is cut into key ranges by time (StartAfter = the name an archive
// made at that time would have), listed in parallel and joined in key order.
// Each range asks for about the keys it should hold, estimated from the density
// of the first page, so that a range reads little past its end; once a page
// reaches the end of the folder the ranges after it are not asked for. Only the
// listing is read: no object is looked up one by one.

// ListConcurrency is how many key ranges of an estate's folder are listed at once.
const ListConcurrency = 4

// listPage is the most keys a listing page returns (S3's limit).
const listPage = 1000

// maxRanges bounds the ranges of one listing: a folder whose archives stopped long
// ago is estimated up to now, and its empty ranges cost a request each.
const maxRanges = 64

// rangeKeys is the number of keys a range is cut to hold: below a page, so that a
// range is mostly one request.
const rangeKeys = 850

// archiveTimeOf returns the time in a key name of the estate's folder (the archive's,
// its marker's or its signature's), false for other names.
func archiveTimeOf(name string) (time.Time, bool) {
	const stem = len("flightctl-backup-") + len("20060102T150405Z")
	if len(name) < stem || !strings.HasPrefix(name, "flightctl-backup-") {
		return time.Time{}, false
	}
	t, err := time.Parse("20060102T150405Z", name[len("flightctl-backup-"):stem])
	if err != nil {
		return time.Time{}, false
	}
	return t, true
}

func boundaryName(t time.Time) string {
	return "flightctl-backup-" + t.UTC().Format("20060102T150405Z")
}

// listFolder lists the keys under prefix, in key order.
func (s *Store) listFolder(ctx context.Context, prefix string) ([]minio.ObjectInfo, error) {
	page, rangeKeys := listPage, rangeKeys
	if s.pageSize > 0 {
		page, rangeKeys = s.pageSize, s.pageSize*rangeKeys/listPage
	}
	first, err := s.listPage(ctx, prefix, "", page)
	if err != nil {
		return nil, err
	}
	if !first.IsTruncated || len(first.Contents) == 0 {
		return first.Contents, nil
	}
	keys := first.Contents
	last := keys[len(keys)-1].Key
	// The density of the first page: keys per second of archive time.
	t0, t1, ok := timeSpan(keys, prefix)
	now := time.Now().UTC().Truncate(time.Second).Add(time.Second)
	if !ok || !t1.After(t0) || !now.After(t1) {
		// Not laid out as this tool writes (or everything in one second): page on.
		rest, _, err := s.listRange(ctx, prefix, last, "", 0, page)
		return append(keys, rest...), err
	}
	density := float64(len(keys)) / t1.Sub(t0).Seconds()
	expected := density * now.Sub(t1).Seconds()
	n := int(expected/float64(rangeKeys)) + 1
	if n > maxRanges {
		n = maxRanges
	}
	// Range i covers (bounds[i], bounds[i+1]]; the last one runs to the end of the folder.
	bounds := make([]string, n+1)
	bounds[0] = last
	step := now.Sub(t1) / time.Duration(n)
	for i := 1; i < n; i++ {
		bounds[i] = prefix + boundaryName(t1.Add(time.Duration(i)*step))
		if bounds[i] < bounds[i-1] {
			// Ranges shorter than a second: never step back over listed keys.
			bounds[i] = bounds[i-1]
		}
	}
	results := make([][]minio.ObjectInfo, n)
	errs := make([]error, n)
	// A page that is not truncated reached the end of the folder: the ranges after
	// its own are empty and are not asked for.
	var endMu sync.Mutex
	end := n
	reachedEnd := func(i int) {
		endMu.Lock()
		if i < end {
			end = i
		}
		endMu.Unlock()
	}
	pastEnd := func(i int) bool {
		endMu.Lock()
		defer endMu.Unlock()
		return i > end
	}
	work := make(chan int)
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers := ListConcurrency
	if s.listWorkers > 0 {
		workers = s.listWorkers
	}
	if workers > n {
		workers = n
	}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if pastEnd(i) {
					continue
				}
				var atEnd bool
				results[i], atEnd, errs[i] = s.listRange(ctx, prefix, bounds[i], bounds[i+1], density, page)
				if errs[i] != nil {
					cancel()
				}
				if atEnd {
					reachedEnd(i)
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	for i := 0; i < n; i++ {
		if errs[i] != nil {
			return nil, errs[i]
		}
		keys = append(keys, results[i]...)
	}
	return keys, nil
}

// timeSpan is the first and last archive time of the keys.
func timeSpan(keys []minio.ObjectInfo, prefix string) (first, last time.Time, ok bool) {
	for _, k := range keys {
		if t, isArchive := archiveTimeOf(strings.TrimPrefix(k.Key, prefix)); isArchive {
			first, ok = t, true
			break
		}
	}
	for i := len(keys) - 1; i >= 0; i-- {
		if t, isArchive := archiveTimeOf(strings.TrimPrefix(keys[i].Key, prefix)); isArchive {
			last = t
			break
		}
	}
	return first, last, ok
}

// listRange lists the keys after `after` up to and including `upto` ("" runs to the
// end). density (keys per second of archive time, 0 unknown) sizes the requests.
// atEnd: the listing reached the end of the folder.
func (s *Store) listRange(ctx context.Context, prefix, after, upto string, density float64, page int) (out []minio.ObjectInfo, atEnd bool, err error) {
	var end time.Time
	if upto != "" {
		end, _ = archiveTimeOf(strings.TrimPrefix(upto, prefix))
	}
	for {
		max := page
		if density > 0 && !end.IsZero() {
			if from, ok := archiveTimeOf(strings.TrimPrefix(after, prefix)); ok {
				want := density*end.Sub(from).Seconds()*1.1 + 16
				if want < float64(max) {
					max = int(want)
				}
			}
		}
		r, err := s.listPage(ctx, prefix, after, max)
		if err != nil {
			return nil, false, err
		}
		for _, o := range r.Contents {
			if upto != "" && o.Key > upto {
				return out, false, nil
			}
			out = append(out, o)
		}
		if !r.IsTruncated || len(r.Contents) == 0 {
			return out, true, nil
		}
		after = r.Contents[len(r.Contents)-1].Key
	}
}

// listRequests counts listing requests (the benchmark reports it).
var listRequests atomic.Int64

func (s *Store) listPage(ctx context.Context, prefix, after string, max int) (minio.ListBucketV2Result, error) {
	var r minio.ListBucketV2Result
	if err := ctx.Err(); err != nil {
		return r, err
	}
	listRequests.Add(1)
	// One request of max keys: the iteration stops before asking for another page
	// (which would continue the store's listing from a continuation token); without
	// the owners, which nothing here reads.
	noOwner := false
	for o := range s.client.ListObjectsIter(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, StartAfter: after, MaxKeys: max, Recursive: true, FetchOwner: &noOwner}) {
		if o.Err != nil {
			return r, fmt.Errorf("list %s in bucket %s: %w", prefix, s.bucket, o.Err)
		}
		r.Contents = append(r.Contents, o)
		if len(r.Contents) == max {
			// Maybe more: the caller asks again after the last key.
			r.IsTruncated = true
			break
		}
	}
	return r, nil
}

// List returns the estate's archives as retention sees them: an archive
// whose marker is there and well formed is Good, one without it NoChecksum
// (never a backup), one with a malformed marker BadChecksum; Signed when its
// signature is stored beside it. A signature whose archive is gone comes back
// under its own name (retention.Plan lists it as an orphan, never as an
// archive). Other names under the estate's folder come back too; retention
// ignores them.
func (s *Store) List(ctx context.Context, estate string) ([]retention.Archive, error) {
	if err := ValidEstate(estate); err != nil {
		return nil, err
	}
	prefix := s.estatePrefix(estate)
	objects, err := s.listFolder(ctx, prefix)
	if err != nil {
		return nil, err
	}
	return archivesOf(prefix, objects), nil
}

// archivesOf turns the keys of an estate's folder into its archives (see List).
func archivesOf(prefix string, objects []minio.ObjectInfo) []retention.Archive {
	sizes := make(map[string]int64, len(objects)/2)
	markers := make(map[string]int64, len(objects)/2)
	sigs := map[string]bool{}
	names := make([]string, 0, len(objects)/2)
	for _, o := range objects {
		n := strings.TrimPrefix(o.Key, prefix)
		if strings.Contains(n, "/") {
			continue
		}
		if a, ok := strings.CutSuffix(n, ".sha256"); ok && retention.IsArchiveName(a) {
			markers[a] = o.Size
			continue
		}
		if a, ok := retention.SignatureOf(n); ok {
			sigs[a] = true
			continue
		}
		sizes[n] = o.Size
		names = append(names, n)
	}
	out := make([]retention.Archive, 0, len(names))
	for _, n := range names {
		a := retention.Archive{Name: n, Size: sizes[n]}
		if retention.IsArchiveName(n) {
			a.Signed = sigs[n]
			delete(sigs, n)
			ms, ok := markers[n]
			switch {
			case !ok:
				a.Status, a.Detail = retention.NoChecksum, "no "+n+".sha256 marker"
			case ms != MarkerSize(n):
				a.Status, a.Detail = retention.BadChecksum, fmt.Sprintf("marker %s.sha256 is %d bytes, not a sha256sum line", n, ms)
			}
		}
		out = append(out, a)
	}
	for a := range sigs {
		out = append(out, retention.Archive{Name: retention.SignatureName(a)})
	}
	return out
}
