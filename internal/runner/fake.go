package runner

import (
	"context"
	"fmt"
	"io"
	"sync"
)

// Fake is a Runner for unit tests: it records every command and answers with Handle.
// It is a fake by name; integration tests use Exec against real programs.
type Fake struct {
	mu sync.Mutex
	// Handle answers one command; nil means success with no output.
	Handle func(c Cmd, stdin []byte) (stdout string, err error)
	Calls  []FakeCall
}

// FakeCall is one recorded command with what it read on stdin.
type FakeCall struct {
	Cmd   Cmd
	Stdin []byte
}

// Run records c and answers it.
func (f *Fake) Run(ctx context.Context, c Cmd) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var stdin []byte
	if c.Stdin != nil {
		b, err := io.ReadAll(c.Stdin)
		if err != nil {
			return fmt.Errorf("fake runner: read stdin: %w", err)
		}
		stdin = b
	}
	f.mu.Lock()
	f.Calls = append(f.Calls, FakeCall{Cmd: c, Stdin: stdin})
	handle := f.Handle
	f.mu.Unlock()
	if handle == nil {
		return nil
	}
	out, err := handle(c, stdin)
	if c.Stdout != nil && out != "" {
		if _, werr := io.WriteString(c.Stdout, out); werr != nil {
			return werr
		}
	}
	return err
}
