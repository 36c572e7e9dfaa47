package runner

import "sync"

// Concurrently runs fns at once, the first on the caller's goroutine, and returns when
// all have returned. Each external command is a process start (with container access a
// podman or kubectl exec, 0.1-0.3 s): commands that do not depend on each other are run
// side by side with it.
func Concurrently(fns ...func()) {
	var wg sync.WaitGroup
	for _, fn := range fns[1:] {
		wg.Add(1)
		go func() { defer wg.Done(); fn() }()
	}
	fns[0]()
	wg.Wait()
}
