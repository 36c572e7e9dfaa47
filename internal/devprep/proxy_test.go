package devprep

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/testbed"
)

// delayProxy is a TCP proxy on loopback that holds every chunk for delay in each
// direction, so a request/response round trip takes at least 2*delay, as through a
// port-forward or to a remote KV store. It stands in for netem, which this machine lacks.
// It delays without limiting throughput: chunks queue while earlier ones wait.
type delayProxy struct {
	ln     net.Listener
	target string
	delay  time.Duration
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  []net.Conn
}

func startDelayProxy(target string, delay time.Duration) (*delayProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &delayProxy{ln: ln, target: target, delay: delay}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

func (p *delayProxy) Addr() string { return p.ln.Addr().String() }

func (p *delayProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

type chunk struct {
	at   time.Time
	data []byte
}

func (p *delayProxy) pipe(src, dst net.Conn) {
	defer p.wg.Done()
	queue := make(chan chunk, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for c := range queue {
			if d := time.Until(c.at.Add(p.delay)); d > 0 {
				preciseSleep(d)
			}
			if _, err := dst.Write(c.data); err != nil {
				return
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	buf := make([]byte, 64*1024)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			queue <- chunk{at: time.Now(), data: append([]byte(nil), buf[:n]...)}
		}
		if err != nil {
			break
		}
	}
	close(queue)
	<-done
}

func (p *delayProxy) Close() error {
	err := p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// preciseSleep blocks this goroutine's thread in nanosleep: the runtime's timers can
// oversleep sub-millisecond delays by up to a millisecond, which would double the link's
// round trip.
func preciseSleep(d time.Duration) {
	ts := syscall.NsecToTimespec(d.Nanoseconds())
	for {
		if err := syscall.Nanosleep(&ts, &ts); err != syscall.EINTR {
			return
		}
	}
}

// The benchmark's proxy must pass every byte both ways, pipelines included.
func TestDelayProxyForwards(t *testing.T) {
	testbed.Need(t, "redis-server")
	kv := testbed.RedisForTest(t)
	p, err := startDelayProxy(kv.Addr, 200*time.Microsecond)
	require.NoError(t, err)
	c := redis.NewClient(&redis.Options{Addr: p.Addr(), Password: kv.Password, MaxRetries: -1})
	defer c.Close()
	ctx := context.Background()
	pipe := c.Pipeline()
	for i := 0; i < 2000; i++ {
		pipe.Set(ctx, fmt.Sprintf("k%d", i), strings.Repeat("v", i%100), 0)
	}
	_, err = pipe.Exec(ctx)
	require.NoError(t, err)
	n, err := kv.Client().DBSize(ctx).Result()
	require.NoError(t, err)
	assert.Equal(t, int64(2000), n)
	assert.Equal(t, strings.Repeat("v", 42), c.Get(ctx, "k42").Val())
	require.NoError(t, p.Close())
	assert.Error(t, c.Ping(ctx).Err(), "closed proxy")
}
