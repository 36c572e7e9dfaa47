package backup

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/flate"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/pgdump"
)

// benchDB is the database FLIGHTCTL_DR_BENCH_DB names ("host:port:password", the
// flightctl database and its flightctl_app role as bench/backup/run.sh builds them);
// benchmarks that need it are skipped without it.
func benchDB(b *testing.B) (string, int, string) {
	spec := os.Getenv("FLIGHTCTL_DR_BENCH_DB")
	if spec == "" {
		b.Skip("FLIGHTCTL_DR_BENCH_DB (host:port:password of a database built as bench/backup/run.sh does) is not set")
	}
	parts := strings.SplitN(spec, ":", 3)
	if len(parts) != 3 {
		b.Fatalf("FLIGHTCTL_DR_BENCH_DB %q: want host:port:password", spec)
	}
	port, err := strconv.Atoi(parts[1])
	if err != nil {
		b.Fatalf("FLIGHTCTL_DR_BENCH_DB %q: %v", spec, err)
	}
	return parts[0], port, parts[2]
}

func cpuTimes(who int) time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(who, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// levelLog collects the "archive block" debug records of the writer (the level chosen per
// block and the blocks queued then).
type levelLog struct {
	slog.Handler
	steps   []string
	summary string
}

func (l *levelLog) Enabled(context.Context, slog.Level) bool { return true }

func (l *levelLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "archive committed" {
		r.Attrs(func(a slog.Attr) bool {
			switch a.Key {
			case "compression", "rehash", "sync":
				l.summary += a.Key + "=" + a.Value.String() + " "
			}
			return true
		})
	}
	if r.Message == "archive compression level changed" {
		var b strings.Builder
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, "%s=%v ", a.Key, a.Value)
			return true
		})
		l.steps = append(l.steps, strings.TrimSpace(b.String()))
	}
	return nil
}

// BenchmarkDirectBackup is a whole direct backup (the module's chain: estate source,
// pg_dump on this host, backup.Run) of the bench database, per compression mode and
// level. Besides the wall time it reports the CPU-seconds of this process (cpu-s/op: the
// archive writer, the dump check, the hashes) and of pg_dump (pgdump-cpu-s/op), the archive
// size and the share of the tar compressed at each level. With -cpuprofile it shows where
// the module's CPU goes. BENCH_LOG_LEVELS=1 prints every change of level the adaptive
// mode made.
func BenchmarkDirectBackup(b *testing.B) {
	host, port, password := benchDB(b)
	root := b.TempDir()
	pki := filepath.Join(root, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pki, "ca.crt"), []byte("cert\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	config := filepath.Join(root, "service-config.yaml")
	if err := os.WriteFile(config, []byte("db:\n  name: flightctl\n"), 0o600); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(root, "out")
	modes := []struct {
		name, mode string
		level      int
	}{
		{"fixed-2", archive.CompressionFixed, 2},
		{"fixed-1", archive.CompressionFixed, 1},
		{"adaptive-2", archive.CompressionAdaptive, 2},
	}
	if m := os.Getenv("BENCH_MODES"); m != "" {
		keep := modes[:0]
		for _, c := range modes {
			if strings.Contains(" "+m+" ", " "+c.name+" ") {
				keep = append(keep, c)
			}
		}
		modes = keep
	}
	// pg_dump alone into /dev/null, the floor, with the CPU-seconds it spends itself.
	b.Run("pg_dump", func(b *testing.B) {
		var children time.Duration
		for b.Loop() {
			c0 := cpuTimes(syscall.RUSAGE_CHILDREN)
			cmd := exec.Command("pg_dump", "--clean", "--if-exists", "--no-password", "-h", host, "-p", strconv.Itoa(port), "-U", "flightctl_app", "-d", "flightctl")
			cmd.Env = append(os.Environ(), "PGPASSWORD="+password)
			null, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			if err != nil {
				b.Fatal(err)
			}
			cmd.Stdout = null
			err = cmd.Run()
			null.Close()
			if err != nil {
				b.Fatalf("pg_dump: %v", err)
			}
			children += cpuTimes(syscall.RUSAGE_CHILDREN) - c0
		}
		b.ReportMetric(children.Seconds()/float64(b.N), "pgdump-cpu-s/op")
	})
	for _, c := range modes {
		b.Run(c.name, func(b *testing.B) {
			var self, children time.Duration
			var size int64
			for b.Loop() {
				cfg := estate.DefaultPodmanConfig()
				cfg.PKIDir, cfg.EncryptionDir, cfg.ConfigFile, cfg.PAMVolume = pki, filepath.Join(root, "none"), config, ""
				cfg.DBAccess, cfg.DBHost, cfg.DBPort, cfg.DBPassword = estate.DBAccessDirect, host, port, password
				ll := &levelLog{}
				s0, c0 := cpuTimes(syscall.RUSAGE_SELF), cpuTimes(syscall.RUSAGE_CHILDREN)
				res, err := runBackup(context.Background(), testOptions{
					DeploymentType: "podman", Podman: cfg, ServerVersion: "bench", OutputDir: out,
					CompressionLevel: c.level, Compression: c.mode, Logger: slog.New(ll),
				})
				if err != nil {
					b.Fatal(err)
				}
				self += cpuTimes(syscall.RUSAGE_SELF) - s0
				children += cpuTimes(syscall.RUSAGE_CHILDREN) - c0
				size += res.Size
				b.Logf("%s: %.1f MB, %s, %d level changes", c.name, float64(res.Size)/1e6, ll.summary, len(ll.steps))
				if os.Getenv("BENCH_LOG_LEVELS") != "" {
					b.Logf("%s: %s", c.name, strings.Join(ll.steps, "; "))
				}
				b.StopTimer()
				if err := os.RemoveAll(out); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			n := float64(b.N)
			b.ReportMetric(self.Seconds()/n, "cpu-s/op")
			b.ReportMetric(children.Seconds()/n, "pgdump-cpu-s/op")
			b.ReportMetric(float64(size)/n/1e6, "archive-MB")
		})
	}
}

// benchDump is the plain dump FLIGHTCTL_DR_BENCH_DUMP names (pg_dump --clean --if-exists
// of the bench database, saved to a file); benchmarks that need it are skipped without it.
func benchDump(b *testing.B) []byte {
	p := os.Getenv("FLIGHTCTL_DR_BENCH_DUMP")
	if p == "" {
		b.Skip("FLIGHTCTL_DR_BENCH_DUMP (a plain pg_dump of the bench database) is not set")
	}
	data, err := os.ReadFile(p)
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkDumpComponents is the CPU each part of a direct backup spends on the bench
// dump, one goroutine each, in CPU-seconds per GB of dump: its sha256, the crc32 of
// the gzip members, the dump check (pgdump.Watch, as the Podman source tees the dump
// into it), and the deflate of every level the writer may use (with the archive's share
// of the dump, out-%).
func BenchmarkDumpComponents(b *testing.B) {
	data := benchDump(b)
	gb := float64(len(data)) / 1e9
	run := func(name string, f func() int64) {
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			var out int64
			c0 := cpuTimes(syscall.RUSAGE_SELF)
			for b.Loop() {
				out = f()
			}
			b.ReportMetric((cpuTimes(syscall.RUSAGE_SELF)-c0).Seconds()/(float64(b.N)*gb), "cpu-s/GB")
			if out > 0 {
				b.ReportMetric(100*float64(out)/float64(len(data)), "out-%")
			}
		})
	}
	run("sha256", func() int64 { sha256.Sum256(data); return 0 })
	run("crc32", func() int64 { crc32.ChecksumIEEE(data); return 0 })
	run("dumpcheck", func() int64 {
		w := pgdump.Watch()
		for p := data; len(p) > 0; {
			n := min(len(p), 1<<20)
			_, _ = w.Write(p[:n])
			p = p[n:]
		}
		if st := w.Close(); st.Err != nil || !st.Complete {
			b.Fatalf("the dump check refused the bench dump: %v", st.Err)
		}
		return 0
	})
	for _, level := range []int{2, 1, archive.HuffmanOnlyLevel} {
		run("deflate-"+strconv.Itoa(level), func() int64 {
			fw, err := flate.NewWriter(io.Discard, level)
			if err != nil {
				b.Fatal(err)
			}
			var out countingWriter
			for p := data; len(p) > 0; {
				n := min(len(p), 1<<20)
				fw.Reset(&out)
				_, _ = fw.Write(p[:n])
				_ = fw.Close()
				p = p[n:]
			}
			return int64(out)
		})
	}
}

type countingWriter int64

func (c *countingWriter) Write(p []byte) (int, error) {
	*c += countingWriter(len(p))
	return len(p), nil
}
