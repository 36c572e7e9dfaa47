package archive

import (
	"bytes"
	"context"
	"os"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"

	"flightctl.dr/internal/encrypt"
)

// benchKeys are one X25519 recipient and its identity, for the encryption benchmarks.
func benchKeys(b *testing.B) (*encrypt.Recipients, *encrypt.Identities) {
	id, err := age.GenerateX25519Identity()
	if err != nil {
		b.Fatal(err)
	}
	rec, err := encrypt.ParseRecipients([]string{id.Recipient().String()})
	if err != nil {
		b.Fatal(err)
	}
	ids, err := encrypt.ParseIdentities(id.String())
	if err != nil {
		b.Fatal(err)
	}
	return rec, ids
}

// cpuTime is the CPU time (user and system) this process used so far: on a shared,
// loaded machine it compares runs better than wall time does.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func writeBench(b *testing.B, dir string, rec *encrypt.Recipients) *Result {
	w, err := NewWriter(context.Background(), WriterOptions{Dir: dir, Now: func() time.Time { return time.Unix(0, 0) }, Encryption: rec})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := w.AddStream(DatabaseDump, 0o600, time.Time{}, bytes.NewReader(benchData)); err != nil {
		b.Fatal(err)
	}
	res, err := w.Commit(Metadata{Version: "v1", DeploymentType: DeploymentPodman, DatabaseIncluded: true})
	if err != nil {
		b.Fatal(err)
	}
	return res
}

// BenchmarkBackupStream is the backup's archive stream (a 64 MiB dump through AddStream
// and Commit: tar, gzip members on every CPU, checksum) plain and encrypted with age to
// one X25519 recipient (tar, gzip, age, file). MB/s of input.
func BenchmarkBackupStream(b *testing.B) {
	rec, _ := benchKeys(b)
	for _, c := range []struct {
		name string
		rec  *encrypt.Recipients
	}{{"plain", nil}, {"encrypted", rec}} {
		b.Run(c.name, func(b *testing.B) {
			dir := b.TempDir()
			b.SetBytes(int64(len(benchData)))
			var cpu time.Duration
			for b.Loop() {
				start := cpuTime()
				res := writeBench(b, dir, c.rec)
				cpu += cpuTime() - start
				b.StopTimer()
				os.Remove(res.Path)
				os.Remove(res.ChecksumPath)
				b.StartTimer()
			}
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

// BenchmarkVerifyStream is Verify of that archive, plain, and encrypted with the
// identity given (decrypted in the same pass). MB/s of the dump's bytes, so both read
// the same amount of data.
func BenchmarkVerifyStream(b *testing.B) {
	rec, ids := benchKeys(b)
	for _, c := range []struct {
		name string
		rec  *encrypt.Recipients
		ids  *encrypt.Identities
	}{{"plain", nil, nil}, {"encrypted-with-key", rec, ids}} {
		b.Run(c.name, func(b *testing.B) {
			res := writeBench(b, b.TempDir(), c.rec)
			b.SetBytes(int64(len(benchData)))
			var cpu time.Duration
			for b.Loop() {
				start := cpuTime()
				if _, err := Verify(context.Background(), res.Path, VerifyOptions{RequireChecksum: true, Decryption: c.ids}); err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime() - start
			}
			b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}
