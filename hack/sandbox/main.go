// Command sandbox starts, checks and stops a Flight Control-shaped estate on this machine
// (see internal/sandbox):
//
//	go run ./hack/sandbox up --dir D [--devices N] [--version V] [--prefix P] [--no-podman] [--s3]
//	go run ./hack/sandbox up --kubernetes --dir D [--devices N] [--version V]
//	go run ./hack/sandbox status --dir D
//	go run ./hack/sandbox down --dir D
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"flightctl.dr/internal/sandbox"
)

func usage() {
	fmt.Fprintln(os.Stderr, "usage: sandbox up|status|down --dir DIR [--devices N] [--version V] [--prefix P] [--no-podman] [--kubernetes] [--s3] [-v]")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	dir := fs.String("dir", "", "sandbox directory (required)")
	devices := fs.Int("devices", 30, "number of seeded devices")
	version := fs.String("version", sandbox.DefaultVersion, "server version (flightctl-api image tag)")
	prefix := fs.String("prefix", "", "prefix for container, secret and volume names")
	noPodman := fs.Bool("no-podman", false, "run PostgreSQL and Redis without containers")
	kubernetes := fs.Bool("kubernetes", false, "the Kubernetes form: a test cluster holding a Helm install of Flight Control (scripts/k8s-testbed.sh builds it once)")
	s3 := fs.Bool("s3", false, "also start an S3 server (MinIO on loopback, scripts/build-minio.sh builds it once) with a bucket for off-host copies")
	verbose := fs.Bool("v", false, "log progress to stderr")
	_ = fs.Parse(os.Args[2:])
	if *dir == "" {
		usage()
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var err error
	switch cmd {
	case "up":
		var st *sandbox.State
		up := sandbox.Up
		if *kubernetes {
			up = sandbox.UpKubernetes
		}
		st, err = up(ctx, sandbox.Options{Dir: *dir, Devices: *devices, Version: *version, Prefix: *prefix, NoPodman: *noPodman, S3: *s3, Logger: logger})
		if err == nil && st.Kubernetes != nil {
			fmt.Printf("  kubeconfig %s (API server %s, namespaces %s and %s)\n", st.Kubernetes.Kubeconfig, st.Kubernetes.Host, st.Kubernetes.Namespace, st.Kubernetes.InternalNamespace)
		}
		if err == nil && st.S3 != nil {
			fmt.Printf("  s3 %s bucket %s prefix %s\n", st.S3.Endpoint, st.S3.Bucket, st.S3.Prefix)
		}
		if err == nil {
			fmt.Printf("sandbox up in %s (version %s, %d devices)\n", st.Dir, st.ServerVersion, st.Seed.Devices)
			fmt.Printf("  source %s/%s\n  inventory %s/%s\n", st.Dir, sandbox.EnvFile, st.Dir, sandbox.InventoryFile)
		}
	case "status":
		var r *sandbox.Report
		r, err = sandbox.Status(ctx, *dir)
		if err == nil {
			b, _ := json.MarshalIndent(r, "", "  ")
			fmt.Println(string(b))
			if !r.Up {
				os.Exit(1)
			}
		}
	case "down":
		err = sandbox.Down(ctx, *dir, logger)
		if err == nil {
			fmt.Printf("sandbox in %s stopped\n", *dir)
		}
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
