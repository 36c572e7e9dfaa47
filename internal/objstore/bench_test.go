package objstore

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"flightctl.dr/internal/procstat"
	"flightctl.dr/internal/retention"
	"flightctl.dr/internal/testbed"
)

// benchSize is the archive size of the upload benchmarks
// (FLIGHTCTL_DR_BENCH_S3_SIZE bytes, default 1 GiB).
func benchSize(b *testing.B) int64 {
	if v := os.Getenv("FLIGHTCTL_DR_BENCH_S3_SIZE"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	return 1 << 30
}

// benchArchive writes size random bytes under an archive name with its
// .sha256 beside it (Upload reads the bytes and the checksum, not the tar).
func benchArchive(b *testing.B, size int64) string {
	dir := b.TempDir()
	path := filepath.Join(dir, "flightctl-backup-20261201T020000Z.tar.gz")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, size); err != nil {
		b.Fatal(err)
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := os.WriteFile(path+".sha256", markerBody(sum, filepath.Base(path)), 0o644); err != nil {
		b.Fatal(err)
	}
	return path
}

func benchStore(b *testing.B, m *testbed.MinIO, bucket string, partSize int64, concurrency int) *Store {
	s, err := Open(Config{Endpoint: m.URL, Bucket: bucket, AccessKey: m.AccessKey, SecretKey: m.SecretKey, PartSize: partSize, Concurrency: concurrency})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.EnsureBucket(context.Background(), "", false); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkUpload: Upload (multipart, checksums, verification, marker) against
// a plain single PUT of the same file to the same server.
func BenchmarkUpload(b *testing.B) {
	m := testbed.MinIOForTest(b)
	size := benchSize(b)
	path := benchArchive(b, size)
	name := filepath.Base(path)
	ctx := context.Background()

	b.Run("plain-put", func(b *testing.B) {
		s := benchStore(b, m, "bench-put", 0, 0)
		b.SetBytes(size)
		for b.Loop() {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			cpu := cpuClock(m)
			_, err = s.core.PutObject(ctx, s.bucket, "plain/"+name, f, size, "", "", minio.PutObjectOptions{DisableContentSha256: true})
			cpu.report(b)
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := s.client.RemoveObject(ctx, s.bucket, "plain/"+name, minio.RemoveObjectOptions{}); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	// minio-go's own multipart upload (not resumable, no verification), for reference.
	b.Run("minio-go-multipart-16MiB-x4", func(b *testing.B) {
		s := benchStore(b, m, "bench-mp", 0, 0)
		b.SetBytes(size)
		for b.Loop() {
			f, err := os.Open(path)
			if err != nil {
				b.Fatal(err)
			}
			cpu := cpuClock(m)
			_, err = s.client.PutObject(ctx, s.bucket, "mp/"+name, f, size, minio.PutObjectOptions{PartSize: 16 << 20, NumThreads: 4, DisableContentSha256: true})
			cpu.report(b)
			f.Close()
			if err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := s.client.RemoveObject(ctx, s.bucket, "mp/"+name, minio.RemoveObjectOptions{}); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	type variant struct {
		part     int64
		conc     int
		checksum string // "" the default (CRC32C)
		inline   bool   // sha256 on the reading goroutine, as before it had its own
	}
	var variants []variant
	for _, ps := range []int64{8 << 20, 16 << 20, 32 << 20, 64 << 20} {
		for _, conc := range []int{2, 3, 4} {
			variants = append(variants, variant{part: ps, conc: conc})
		}
	}
	// The previous implementation (CRC64NVME parts, sha256 on the reading goroutine)
	// and each of its two changes alone, at the default part size.
	for _, conc := range []int{2, 3, 4} {
		variants = append(variants,
			variant{part: 16 << 20, conc: conc, checksum: "crc64nvme"},
			variant{part: 16 << 20, conc: conc, inline: true},
			variant{part: 16 << 20, conc: conc, checksum: "crc64nvme", inline: true})
	}
	for _, v := range variants {
		label := fmt.Sprintf("upload-part-%dMiB-x%d", v.part>>20, v.conc)
		if v.checksum != "" {
			label += "-" + v.checksum
		}
		if v.inline {
			label += "-hash-inline"
		}
		b.Run(label, func(b *testing.B) {
			s := benchStore(b, m, "bench-upload", v.part, v.conc)
			if v.checksum != "" {
				s.checksum = minio.ChecksumCRC64NVME
			}
			s.hashInline = v.inline
			b.SetBytes(size)
			for b.Loop() {
				cpu := cpuClock(m)
				r, err := s.Upload(ctx, "bench", path, UploadOptions{})
				if err != nil {
					b.Fatal(err)
				}
				cpu.report(b)
				b.ReportMetric(r.PartsDuration.Seconds(), "parts-s")
				b.ReportMetric(r.CompleteDuration.Seconds(), "complete-s")
				b.ReportMetric(r.VerifyDuration.Seconds(), "verify+marker-s")
				b.StopTimer()
				if _, err := s.Delete(ctx, "bench", []string{name + ".sha256", name}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}

// cpuTimes are the CPU seconds used so far by this process and by the MinIO server.
type cpuTimes struct {
	m            *testbed.MinIO
	self, server float64
}

func cpuClock(m *testbed.MinIO) cpuTimes {
	return cpuTimes{m: m, self: procCPU(os.Getpid()), server: procCPU(m.PID)}
}

// report adds the CPU seconds used since the clock started (client-cpu-s: this
// process, uploading; minio-cpu-s: the server).
func (c cpuTimes) report(b *testing.B) {
	b.ReportMetric(procCPU(os.Getpid())-c.self, "client-cpu-s")
	b.ReportMetric(procCPU(c.m.PID)-c.server, "minio-cpu-s")
}

// procCPU is the CPU seconds (utime+stime) a process has used so far.
func procCPU(pid int) float64 {
	st, err := procstat.Read(pid)
	if err != nil {
		return 0
	}
	return st.CPU()
}

// BenchmarkPrunePlanBucket10000: list 10,000 archives (20,000 objects) of an
// estate in a bucket, find the newest that checks out and plan the retention.
func BenchmarkPrunePlanBucket10000(b *testing.B) {
	m := testbed.MinIOForTest(b)
	s := benchStore(b, m, "bench-prune", 0, 0)
	ctx := context.Background()
	const n = 10000
	start := time.Date(2016, 1, 1, 0, 0, 0, 0, time.UTC)
	sum := hex.EncodeToString(make([]byte, 32))
	// Archive objects carry the whole-object checksum Check looks for.
	raw, err := minio.New(m.Endpoint, &minio.Options{Creds: credentials.NewStaticV4(m.AccessKey, m.SecretKey, ""), TrailingHeaders: true})
	if err != nil {
		b.Fatal(err)
	}
	work := make(chan int)
	var wg sync.WaitGroup
	errs := make(chan error, 1)
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := fmt.Sprintf("flightctl-backup-%s.tar.gz", start.Add(time.Duration(i)*7*time.Hour).Format("20060102T150405Z"))
				body := []byte("x")
				if _, err := raw.PutObject(ctx, s.bucket, s.Key("bench", name), bytes.NewReader(body), 1, minio.PutObjectOptions{UserMetadata: map[string]string{MetaSHA256: sum}, Checksum: minio.ChecksumCRC64NVME}); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
				mb := markerBody(sum, name)
				if _, err := s.client.PutObject(ctx, s.bucket, s.Key("bench", name+".sha256"), bytes.NewReader(mb), int64(len(mb)), minio.PutObjectOptions{}); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	policy := retention.Policy{KeepLast: 3, KeepDaily: 14, KeepWeekly: 8, KeepMonthly: 12, KeepYearly: retention.Unlimited, KeepWithin: 48 * time.Hour}
	plan := func(b *testing.B, list []retention.Archive) {
		if len(list) != n {
			b.Fatalf("listed %d archives, want %d", len(list), n)
		}
		plan, err := retention.Make(policy, list, retention.Options{Verify: func(a retention.Archive) error {
			_, err := s.Check(ctx, "bench", a.Name)
			return err
		}})
		if err != nil {
			b.Fatal(err)
		}
		if plan.NewestVerified == "" || len(plan.Remove()) == 0 {
			b.Fatalf("plan keeps %d, removes %d, newest %q", len(plan.Keep()), len(plan.Remove()), plan.NewestVerified)
		}
	}
	// Store.List: the folder listed in parallel key ranges (ListConcurrency, or workers).
	for _, workers := range []int{0, 1, 8} {
		label := "list-ranges"
		if workers > 0 {
			label += fmt.Sprintf("-x%d", workers)
		}
		b.Run(label, func(b *testing.B) {
			s.listWorkers = workers
			defer func() { s.listWorkers = 0 }()
			for b.Loop() {
				cpu := cpuClock(m)
				listRequests.Store(0)
				list, err := s.List(ctx, "bench")
				if err != nil {
					b.Fatal(err)
				}
				plan(b, list)
				cpu.report(b)
				b.ReportMetric(float64(listRequests.Load()), "list-requests")
			}
		})
	}
	// For reference: one listing paged with continuation tokens, as List did before
	// (with the owners), and the same without them.
	for _, owner := range []bool{true, false} {
		label := "list-one-listing"
		if !owner {
			label += "-no-owner"
		}
		b.Run(label, func(b *testing.B) {
			prefix := s.estatePrefix("bench")
			for b.Loop() {
				cpu := cpuClock(m)
				var objects []minio.ObjectInfo
				for o := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: prefix, FetchOwner: &owner}) {
					if o.Err != nil {
						b.Fatal(o.Err)
					}
					objects = append(objects, o)
				}
				plan(b, archivesOf(prefix, objects))
				cpu.report(b)
			}
		})
	}
}
