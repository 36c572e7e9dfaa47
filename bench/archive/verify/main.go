// Command verify runs archive.Verify on one archive and prints the report's
// size and sha256, for the benchmark script.
package main

import (
	"context"
	"fmt"
	"os"

	"flightctl.dr/internal/archive"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: verify ARCHIVE")
		os.Exit(2)
	}
	rep, err := archive.Verify(context.Background(), os.Args[1], archive.VerifyOptions{RequireChecksum: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "verify:", err)
		os.Exit(1)
	}
	fmt.Printf("%s %d entries=%d\n", rep.SHA256, rep.Size, len(rep.Entries))
}
