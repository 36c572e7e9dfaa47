package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"flightctl.dr/internal/ansiblemod"
	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/moduletest"
	"flightctl.dr/internal/testbed"
)

// TestModuleKubernetes runs the module as Ansible does against a real kube-apiserver and
// etcd (pods/exec to the exec node, whose container runtime is a test fake running the
// command on this machine) and a real PostgreSQL, connecting once with kubeconfig and once
// with host, api_key and ca_cert as kubernetes.core users give them.
func TestModuleKubernetes(t *testing.T) {
	testbed.Need(t, "pg_dump", "psql", "sha256sum", "mkfifo")
	bin := moduletest.Build(t, pkg)
	k := testbed.KubeForTest(t)
	pg := testbed.PostgresForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: dbPassword}))
	est, err := k.SeedHelmEstate(ctx, testbed.HelmEstateOptions{Namespace: "fc", InternalNamespace: "fc-internal", DBPassword: dbPassword, AppVersion: "0.10.3"})
	require.NoError(t, err)
	out := filepath.Join(t.TempDir(), "out")
	args := map[string]any{
		"output_dir": out, "deployment_type": "kubernetes", "kubeconfig": k.Kubeconfig,
		"namespace": est.Namespace, "internal_namespace": est.InternalNamespace, "db_port": pg.Port,
	}

	// Check mode: the plan, nothing written.
	check := map[string]any{"_ansible_check_mode": true}
	for k, v := range args {
		check[k] = v
	}
	r := moduletest.Run(t, bin, check)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	assert.Equal(t, "0.10.3", r.Out["server_version"])
	assert.Positive(t, r.Out["estimated_size"])
	assert.NoDirExists(t, out)

	r = moduletest.Run(t, bin, args)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	path := r.Out["archive"].(string)
	rep, err := archive.Verify(ctx, path, archive.VerifyOptions{RequireChecksum: true, ExpectedDeploymentType: "kubernetes"})
	require.NoError(t, err)
	assert.True(t, rep.Components.Database)
	assert.True(t, rep.Components.PKI)
	assert.True(t, rep.Components.Config)
	assert.NotContains(t, r.Stdout+r.Stderr, dbPassword)

	// host + api_key + ca_cert, the token of a service account allowed everything needed.
	cfg, token, err := k.TokenKubeconfig(ctx, est.Namespace, "dr")
	require.NoError(t, err)
	_ = cfg
	r = moduletest.Run(t, bin, map[string]any{
		"output_dir": out, "deployment_type": "kubernetes", "host": k.Host, "api_key": token, "ca_cert": k.CAFile,
		"namespace": est.Namespace, "internal_namespace": est.InternalNamespace, "db_port": pg.Port,
	})
	assert.Equal(t, true, r.Out["failed"])
	msg, _ := r.Out["msg"].(string)
	assert.Contains(t, msg, "system:serviceaccount:"+est.Namespace+":dr lacks 7 permission(s)")
	assert.Contains(t, msg, "create pods/exec in namespace "+est.InternalNamespace)
	assert.NotContains(t, r.Stdout+r.Stderr, token, "the token is a secret")
	inv := r.Out["invocation"].(map[string]any)["module_args"].(map[string]any)
	assert.Equal(t, ansiblemod.NoLogValue, inv["api_key"])
	assert.Equal(t, 1, countArchives(t, out), "the refused run wrote nothing")

	// Upstream's flags reach the Kubernetes options: the run finds the database pod in the
	// internal namespace (and fails there, since the pod's port 5432 is not this test's
	// PostgreSQL), writing nothing.
	link := filepath.Join(t.TempDir(), "flightctl-backup")
	require.NoError(t, os.Symlink(bin, link))
	upOut := t.TempDir()
	cmd := exec.Command(link, "--output", upOut, "--deployment-type", "kubernetes", "--namespace", est.Namespace,
		"--internal-namespace", est.InternalNamespace, "--helm-release-name", "flightctl")
	cmd.Env = append(os.Environ(), "KUBECONFIG="+k.Kubeconfig)
	combined, err := cmd.CombinedOutput()
	require.Error(t, err)
	assert.Contains(t, string(combined), "in pod "+est.InternalNamespace+"/"+est.DBPod)
	entries, _ := os.ReadDir(upOut)
	assert.Empty(t, entries)
}

func countArchives(t *testing.T, dir string) int {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(dir, "*.tar.gz"))
	require.NoError(t, err)
	n := 0
	for _, m := range matches {
		if strings.HasSuffix(m, ".tar.gz") {
			n++
		}
	}
	return n
}
