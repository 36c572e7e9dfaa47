package estate_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/kube"
	"flightctl.dr/internal/restore"
	"flightctl.dr/internal/testbed"
)

// testJournalLease is the lock's lease in these tests: the default, so that renewals keep
// the lock on a loaded machine. The run after a killed one does not wait for it: the
// killed holder was a process of this host, and it is gone.
const testJournalLease = estate.DefaultJournalLease

// clusterTarget is the case's target with the journal in the cluster: the test does not
// run in a pod, so the location is forced rather than taken from auto.
func (c *kubeCase) clusterTarget(t *testing.T, location string) *estate.KubernetesRestore {
	return c.clusterTargetLease(t, location, testJournalLease)
}

func (c *kubeCase) clusterTargetLease(t *testing.T, location string, lease time.Duration) *estate.KubernetesRestore {
	t.Helper()
	k := &estate.KubernetesRestore{Config: c.config(), Restore: estate.KubernetesRestoreConfig{PollInterval: 20 * time.Millisecond, QuiesceTimeout: time.Minute,
		JournalLocation: location, JournalLease: lease},
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	require.NoError(t, k.Open(context.Background()))
	return k
}

func (c *kubeCase) clusterOptions(t *testing.T, archive string) restore.Options {
	return restore.Options{ArchivePath: archive, Target: c.clusterTarget(t, estate.JournalCluster), StateDir: c.state, FlushKV: true}
}

func (c *kubeCase) clusterJournal(t *testing.T) *restore.Journal {
	t.Helper()
	cl, err := kube.New(kube.Config{Kubeconfig: c.b.k.Kubeconfig})
	require.NoError(t, err)
	j, err := estate.ReadKubeJournal(context.Background(), cl, c.est.Namespace)
	require.NoError(t, err)
	return j
}

// journalSecrets lists the journal Secrets of every namespace, as "namespace/name".
func (c *kubeCase) journalSecrets(t *testing.T) []string {
	l, err := c.b.k.Clientset.CoreV1().Secrets("").List(context.Background(), metav1.ListOptions{LabelSelector: "flightctl.dr/restore-journal=true"})
	require.NoError(t, err)
	var out []string
	for _, s := range l.Items {
		out = append(out, s.Namespace+"/"+s.Name)
	}
	return out
}

func (c *kubeCase) leaseExists(t *testing.T) bool {
	_, err := c.b.k.Clientset.CoordinationV1().Leases(c.est.Namespace).Get(context.Background(), estate.KubeJournalLease, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false
	}
	require.NoError(t, err)
	return true
}

func TestKubernetesRestoreJournalInCluster(t *testing.T) {
	b := newKubeRestoreBed(t)
	ctx := context.Background()

	t.Run("sigkill_after_scale_down_then_rerun", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		ours := c.backup(t)
		// Every PKI Secret of the archive names another namespace: neither they nor the
		// journal go there.
		other := "elsewhere-" + strconv.Itoa(caseSeq)
		require.NoError(t, b.k.EnsureNamespace(ctx, other))
		archive := upstreamArchive(t, ours, func(name string, data []byte) []byte {
			if !strings.HasPrefix(name, "pki/") {
				return data
			}
			var s map[string]any
			require.NoError(t, yaml.Unmarshal(data, &s))
			s["metadata"].(map[string]any)["namespace"] = other
			out, err := yaml.Marshal(s)
			require.NoError(t, err)
			return out
		})
		c.disaster()
		c.runKilledChildWith(t, kubeChild{Archive: archive, KillAt: restore.StepStopUnits, Journal: estate.JournalCluster, LeaseMS: int(testJournalLease / time.Millisecond)})
		assert.Equal(t, "0 (annotated 2)", c.replicas()["flightctl-api"], "killed after the scale-down")
		j := c.clusterJournal(t)
		require.NotNil(t, j, "the killed run's journal is in the cluster")
		require.Equal(t, restore.StateRunning, j.State)
		assert.Equal(t, int32(2), j.Scales[c.est.Namespace+"/flightctl-api"])
		assert.NoFileExists(t, filepath.Join(c.state, restore.JournalFile), "nothing in the state directory")
		require.True(t, c.leaseExists(t), "the killed run's lock is left")

		res, err := restore.Run(ctx, c.clusterOptions(t, archive))
		require.NoError(t, err)
		assert.Equal(t, j.ID, res.RestoreID, "the re-run finishes the killed one")
		c.assertRestored(t)
		assert.Nil(t, c.secret(other, "flightctl-ca"), "nothing written into the namespace the archive names")

		done := c.clusterJournal(t)
		require.NotNil(t, done)
		assert.Equal(t, restore.StateDone, done.State)
		require.NotNil(t, done.Items)
		require.NotEmpty(t, done.Items.Staged)
		for _, it := range append(append([]restore.Item{}, done.Items.Staged...), done.Items.Before...) {
			assert.Empty(t, it.Object, "the finished journal keeps no copy of %s", it.Ref())
		}
		assert.False(t, c.leaseExists(t), "the lock is released")
		assert.Equal(t, []string{c.est.Namespace + "/" + estate.KubeJournalSecret}, c.journalSecrets(t), "one journal, in the release namespace only")
		js := c.secret(c.est.Namespace, estate.KubeJournalSecret)
		assert.Equal(t, corev1.SecretTypeOpaque, js.Type)
		assert.NoFileExists(t, filepath.Join(c.state, restore.JournalFile))

		// The journal tells the next run that this archive is in place.
		res, err = restore.Run(ctx, c.clusterOptions(t, archive))
		require.NoError(t, err)
		assert.False(t, res.Changed, res.Message)
		assert.False(t, c.leaseExists(t))
	})

	t.Run("second_concurrent_run_refused", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		archive := c.backup(t)
		reached, release := make(chan struct{}), make(chan struct{})
		// The first run holds the lock in this process: the second sees a live holder of
		// this host and is refused at once, whatever the renewals do.
		first := c.clusterOptions(t, archive)
		first.Checkpoint = func(name string) error {
			if name == restore.StepStopUnits {
				close(reached)
				<-release
			}
			return nil
		}
		firstDone := make(chan error, 1)
		go func() { _, err := restore.Run(ctx, first); firstDone <- err }()
		select {
		case <-reached:
		case err := <-firstDone:
			t.Fatalf("the first restore ended before it stopped the Deployments: %v", err)
		}
		before := c.replicas()
		j := c.clusterJournal(t)
		_, err := restore.Run(ctx, c.clusterOptions(t, archive))
		require.Error(t, err)
		assert.Contains(t, err.Error(), "another restore is running")
		assert.Contains(t, err.Error(), "Lease "+c.est.Namespace+"/"+estate.KubeJournalLease)
		assert.Contains(t, err.Error(), "wait for it to finish")
		assert.Equal(t, before, c.replicas(), "the refused run changed nothing")
		assert.Equal(t, j, c.clusterJournal(t), "the refused run left the journal alone")
		close(release)
		require.NoError(t, <-firstDone)
		assert.Equal(t, wantReplicas(), c.replicas())
		assert.False(t, c.leaseExists(t))
	})

	t.Run("location_and_permissions", func(t *testing.T) {
		c := b.newCase(t, testbed.HelmEstateOptions{})
		auto := c.clusterTarget(t, estate.JournalAuto)
		assert.Nil(t, auto.JournalStore(), "auto from a kubeconfig: the state directory")
		assert.NotContains(t, fmt.Sprint(auto.Permissions()), "leases")
		in := c.clusterTarget(t, estate.JournalCluster)
		require.NotNil(t, in.JournalStore())
		assert.Equal(t, "Secret "+c.est.Namespace+"/"+estate.KubeJournalSecret, in.JournalStore().String())
		perms := fmt.Sprint(in.Permissions())
		for _, v := range []string{"get", "create", "update", "delete"} {
			assert.Contains(t, perms, v+" leases.coordination.k8s.io in namespace "+c.est.Namespace)
			assert.Contains(t, perms, v+" secrets in namespace "+c.est.Namespace)
		}
		k := &estate.KubernetesRestore{Config: c.config(), Restore: estate.KubernetesRestoreConfig{JournalLocation: "configmap"}}
		require.ErrorContains(t, k.Open(ctx), `journal_location "configmap" is not valid`)
		_, _, err := estate.OpenRestoreTarget(ctx, estate.RestoreTargetOptions{Type: estate.Podman, JournalLocation: estate.JournalCluster})
		require.ErrorContains(t, err, "journal_location cluster keeps the journal in a Kubernetes Secret: it needs deployment_type kubernetes")
	})
}

func TestKubernetesRestorePasswordSync(t *testing.T) {
	b := newKubeRestoreBed(t)
	ctx := context.Background()
	c := b.newCase(t, testbed.HelmEstateOptions{})
	ins := c.est.InternalNamespace
	const migratorPW = "migrator-from-the-Secret"
	_, err := b.k.Clientset.CoreV1().Secrets(ins).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "flightctl-db-migration-secret"},
		Data: map[string][]byte{"migrationUser": []byte("flightctl_migrator"), "migrationPassword": []byte(migratorPW)}}, metav1.CreateOptions{})
	require.NoError(t, err)
	archive := c.backup(t)
	alter := func(user, pw string) {
		conn, err := b.pg.SuperuserConn(ctx, "postgres")
		require.NoError(t, err)
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", user, pw))
		require.NoError(t, err)
	}
	// The database's passwords no longer match the Secrets: the migrator's before the
	// restore, the application user's once the preflight (which connects as that user) has
	// passed; device preparation, which connects as that user with the Secret's password,
	// comes after the sync.
	alter("flightctl_migrator", "stale-migrator")
	opts := c.options(t, archive)
	opts.Checkpoint = func(name string) error {
		if name == "load_database:created" {
			alter("flightctl_app", "stale-app")
		}
		return nil
	}
	opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	res, err := restore.Run(ctx, opts)
	require.NoError(t, err, "password sync: %v", res.PasswordSync)
	assert.Equal(t, map[string]string{
		"flightctl_app":      "set from Secret " + ins + "/flightctl-db-app-secret",
		"flightctl_migrator": "set from Secret " + ins + "/flightctl-db-migration-secret",
		"admin":              "not set: no Secret " + ins + "/flightctl-db-admin-secret",
	}, res.PasswordSync)
	connects := func(user, pw string) error {
		conn, err := pgx.Connect(ctx, b.pg.DSN("postgres", user, pw))
		if err == nil {
			conn.Close(ctx)
		}
		return err
	}
	assert.NoError(t, connects("flightctl_migrator", migratorPW), "the migrator's password is the Secret's again")
	assert.Error(t, connects("flightctl_migrator", "stale-migrator"))
	assert.NoError(t, connects("flightctl_app", kubeAppPassword), "the application user's password is the Secret's again")
	assert.Error(t, connects("flightctl_app", "stale-app"))
}

func TestKubernetesDevicesOnlyRefusal(t *testing.T) {
	b := newKubeRestoreBed(t)
	c := b.newCase(t, testbed.HelmEstateOptions{})
	opts := c.options(t, "")
	_, err := restore.Run(context.Background(), opts)
	require.Error(t, err)
	msg := err.Error()
	assert.Contains(t, msg, "device preparation refused: the application Deployments "+c.est.Namespace+"/flightctl-api")
	assert.Contains(t, msg, "kubectl scale deployment -n "+c.est.Namespace+" flightctl-api ")
	assert.Contains(t, msg, "kubectl scale deployment -n "+c.est.InternalNamespace+" flightctl-worker ")
	assert.Contains(t, msg, "--replicas=0")
	assert.NotContains(t, msg, "systemctl")
	assert.NotContains(t, msg, "application units")
}
