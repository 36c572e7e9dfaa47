package roles

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	authzv1 "k8s.io/api/authorization/v1"
	batchv1 "k8s.io/api/batch/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"flightctl.dr/internal/archive"
	"flightctl.dr/internal/estate"
	"flightctl.dr/internal/kube"
	"flightctl.dr/internal/moduletest"
	"flightctl.dr/internal/testbed"
)

func TestMain(m *testing.M) { moduletest.Main(m) }

// collectionsPath makes a collections directory in which flightctl.dr is this checkout's
// collection/ tree, so that ansible-playbook runs the roles as they are here.
func collectionsPath(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	ns := filepath.Join(dir, "ansible_collections", "flightctl")
	require.NoError(t, os.MkdirAll(ns, 0o755))
	require.NoError(t, os.Symlink(filepath.Join(repoRoot(), "collection"), filepath.Join(ns, "dr")))
	return dir
}

// runRole runs the role name of this checkout's collection on localhost with vars.
func runRole(t *testing.T, collections, name string, vars map[string]any) (string, error) {
	t.Helper()
	dir := t.TempDir()
	ev, err := json.Marshal(vars)
	require.NoError(t, err)
	play := "- hosts: localhost\n  gather_facts: false\n  vars: " + string(ev) + "\n  roles:\n    - flightctl.dr." + name + "\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "play.yml"), []byte(play), 0o600))
	cmd := exec.Command("ansible-playbook", "-i", "localhost,", "-c", "local", filepath.Join(dir, "play.yml"))
	cmd.Env = append(os.Environ(), "ANSIBLE_NOCOLOR=1", "ANSIBLE_RETRY_FILES_ENABLED=0", "ANSIBLE_LOCALHOST_WARNING=0",
		"ANSIBLE_COLLECTIONS_PATH="+collections)
	b, err := cmd.CombinedOutput()
	return string(b), err
}

// access is one allowed action, as an RBAC rule reads: "get apps/deployments in fc".
func access(verb, group, resource, ns string) string {
	return fmt.Sprintf("%s %s/%s in %s", verb, group, resource, ns)
}

// permissionSet is what the backup checks before it starts, in access's words.
func permissionSet(perms []kube.Permission) []string {
	var out []string
	for _, p := range perms {
		res := p.Resource
		if p.Subresource != "" {
			res += "/" + p.Subresource
		}
		out = append(out, access(p.Verb, p.Group, res, p.Namespace))
	}
	sort.Strings(out)
	return out
}

// grantedSet reads from the API server every rule of the Roles bound to the service account
// ns/name in namespaces, in access's words.
func grantedSet(t *testing.T, ctx context.Context, cs kubernetes.Interface, saNS, sa string, namespaces ...string) []string {
	t.Helper()
	seen := map[string]bool{}
	for _, ns := range namespaces {
		rbs, err := cs.RbacV1().RoleBindings(ns).List(ctx, metav1.ListOptions{})
		require.NoError(t, err)
		for _, rb := range rbs.Items {
			bound := false
			for _, s := range rb.Subjects {
				bound = bound || (s.Kind == "ServiceAccount" && s.Name == sa && s.Namespace == saNS)
			}
			if !bound {
				continue
			}
			require.Equal(t, "Role", rb.RoleRef.Kind, "the account gets Roles only, never a ClusterRole")
			role, err := cs.RbacV1().Roles(ns).Get(ctx, rb.RoleRef.Name, metav1.GetOptions{})
			require.NoError(t, err)
			for _, r := range role.Rules {
				assert.Empty(t, r.ResourceNames)
				for _, g := range r.APIGroups {
					for _, res := range r.Resources {
						for _, v := range r.Verbs {
							require.NotEqual(t, "*", v)
							seen[access(v, g, res, ns)] = true
						}
					}
				}
			}
		}
	}
	out := make([]string, 0, len(seen))
	for a := range seen {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// asServiceAccount is a clientset that impersonates the service account ns/name.
func asServiceAccount(t *testing.T, kubeconfig, ns, name string) kubernetes.Interface {
	t.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	require.NoError(t, err)
	rc.Impersonate.UserName = "system:serviceaccount:" + ns + ":" + name
	rc.Impersonate.Groups = []string{"system:serviceaccounts", "system:serviceaccounts:" + ns, "system:authenticated"}
	cs, err := kubernetes.NewForConfig(rc)
	require.NoError(t, err)
	return cs
}

func allowed(t *testing.T, ctx context.Context, cs kubernetes.Interface, verb, group, resource, sub, ns string) bool {
	t.Helper()
	r, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{Spec: authzv1.SelfSubjectAccessReviewSpec{
		ResourceAttributes: &authzv1.ResourceAttributes{Namespace: ns, Verb: verb, Group: group, Resource: resource, Subresource: sub},
	}}, metav1.CreateOptions{})
	require.NoError(t, err)
	return r.Status.Allowed
}

// runInCluster runs the module binary bin on args as the CronJob's pod does: with the
// service account's credentials where a pod has them (/var/run/secrets/kubernetes.io/
// serviceaccount, in a private mount namespace), KUBERNETES_SERVICE_HOST and _PORT pointing
// at the API server, and no kubeconfig or K8S_AUTH_* variable.
func runInCluster(t *testing.T, bin string, args map[string]any, k *testbed.Kube, ns, token string) moduletest.Result {
	t.Helper()
	testbed.Need(t, "unshare", "mount")
	dir := t.TempDir()
	run := filepath.Join(dir, "run")
	sa := filepath.Join(run, "secrets", "kubernetes.io", "serviceaccount")
	require.NoError(t, os.MkdirAll(sa, 0o755))
	ca, err := os.ReadFile(k.CAFile)
	require.NoError(t, err)
	for name, content := range map[string][]byte{"token": []byte(token), "ca.crt": ca, "namespace": []byte(ns)} {
		require.NoError(t, os.WriteFile(filepath.Join(sa, name), content, 0o600))
	}
	b, err := json.Marshal(args)
	require.NoError(t, err)
	argsFile := filepath.Join(dir, "args")
	require.NoError(t, os.WriteFile(argsFile, b, 0o600))
	u, err := url.Parse(k.Host)
	require.NoError(t, err)
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "TMPDIR=" + dir,
		"KUBERNETES_SERVICE_HOST=" + u.Hostname(), "KUBERNETES_SERVICE_PORT=" + u.Port()}
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c", `mount --bind "$1" /run && exec "$2" "$3"`, "sh", run, bin, argsFile)
	cmd.Env = env
	return moduletest.RunCommand(t, cmd)
}

// TestCronJobRole applies the flightctl.dr.cronjob role with ansible-playbook and
// kubernetes.core to a real kube-apiserver and etcd holding a Helm install, then checks as
// the CronJob's service account (impersonated, SelfSubjectAccessReview) that exactly what the
// backup checks before it starts is allowed, and runs the backup with the ConfigMap's
// options and that account's in-cluster credentials: once through pods/exec (the exec node,
// whose container runtime is a test fake running the command on this machine), once with
// db_access direct, reaching the database over TCP with a Role that has no pods/exec. No
// controller runs in the test cluster, so the CronJob's pod itself is not started: the module
// runs here as the pod would (its options, the account's token and CA where a pod has them,
// KUBERNETES_SERVICE_HOST), with the claim's directory for output_dir.
func TestCronJobRole(t *testing.T) {
	testbed.Need(t, "ansible-playbook", "pg_dump", "psql", "sha256sum", "mkfifo")
	if err := exec.Command("/usr/bin/python3", "-c", "import kubernetes").Run(); err != nil {
		testbed.Unavailable(t, "kubernetes.core needs the Python library kubernetes: apt-get install python3-kubernetes (scripts/install-deps.sh)")
	}
	bin := moduletest.Build(t, "flightctl.dr/modules/flightctl_backup")
	k := testbed.KubeForTest(t)
	pg := testbed.PostgresForTest(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const dbPassword = "cron-app-pass"
	require.NoError(t, pg.CreateFlightctlDB(ctx, "flightctl", testbed.FlightctlPasswords{App: dbPassword}))
	est, err := k.SeedHelmEstate(ctx, testbed.HelmEstateOptions{Namespace: "fc", InternalNamespace: "fc-internal", DBPassword: dbPassword, AppVersion: "0.10.4"})
	require.NoError(t, err)
	// Something the account must not see: a Secret in another namespace.
	require.NoError(t, k.EnsureNamespace(ctx, "other"))

	collections := collectionsPath(t)
	manifest := filepath.Join(t.TempDir(), "cronjob.yml")
	vars := map[string]any{
		"flightctl_dr_deployment_type":     "kubernetes",
		"flightctl_dr_namespace":           est.Namespace,
		"flightctl_dr_internal_namespace":  est.InternalNamespace,
		"flightctl_dr_kubeconfig":          k.Kubeconfig,
		"flightctl_dr_db_port":             pg.Port,
		"flightctl_dr_estate_name":         "cluster-a",
		"flightctl_dr_cronjob_image":       "quay.io/example/flightctl-dr-ee:1",
		"flightctl_dr_cronjob_schedule":    "30 1 * * *",
		"flightctl_dr_cronjob_time_zone":   "Europe/Berlin",
		"flightctl_dr_cronjob_deadline":    1800,
		"flightctl_dr_cronjob_manifest":    manifest,
		"flightctl_dr_cronjob_claim_size":  "2Gi",
		"flightctl_dr_cronjob_run_as_user": 1001,
	}
	out, err := runRole(t, collections, "cronjob", vars)
	require.NoError(t, err, out)
	assert.FileExists(t, manifest)

	cs := k.Clientset
	const sa = "flightctl-dr-backup"
	cj, err := cs.BatchV1().CronJobs(est.Namespace).Get(ctx, sa, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, batchv1.ForbidConcurrent, cj.Spec.ConcurrencyPolicy)
	require.NotNil(t, cj.Spec.TimeZone)
	assert.Equal(t, "Europe/Berlin", *cj.Spec.TimeZone)
	assert.Equal(t, "30 1 * * *", cj.Spec.Schedule)
	require.NotNil(t, cj.Spec.JobTemplate.Spec.ActiveDeadlineSeconds)
	assert.Equal(t, int64(1800), *cj.Spec.JobTemplate.Spec.ActiveDeadlineSeconds)
	pod := cj.Spec.JobTemplate.Spec.Template.Spec
	assert.Equal(t, sa, pod.ServiceAccountName)
	require.Len(t, pod.Containers, 1)
	assert.Equal(t, "quay.io/example/flightctl-dr-ee:1", pod.Containers[0].Image)
	// The program is where the collection ships it (not in plugins/modules/).
	assert.Equal(t, []string{"/usr/share/ansible/collections/ansible_collections/flightctl/dr/plugins/module_binaries/flightctl_dr_linux_amd64"}, pod.Containers[0].Command)
	var claim string
	for _, v := range pod.Volumes {
		if v.PersistentVolumeClaim != nil {
			claim = v.PersistentVolumeClaim.ClaimName
		}
	}
	require.Equal(t, "flightctl-dr-backups", claim, "the archives go to a claim")
	pvc, err := cs.CoreV1().PersistentVolumeClaims(est.Namespace).Get(ctx, claim, metav1.GetOptions{})
	require.NoError(t, err)
	assert.Equal(t, "2Gi", pvc.Spec.Resources.Requests.Storage().String())

	// The Roles grant exactly what the backup checks before it starts.
	cfg := estate.KubernetesConfig{Namespace: est.Namespace, InternalNamespace: est.InternalNamespace}
	want := permissionSet((&estate.KubernetesBackup{Config: cfg}).Permissions())
	assert.Equal(t, want, grantedSet(t, ctx, cs, est.Namespace, sa, est.Namespace, est.InternalNamespace, "other", "default"))

	// As the account: everything the backup needs, nothing else.
	as := asServiceAccount(t, k.Kubeconfig, est.Namespace, sa)
	for _, p := range (&estate.KubernetesBackup{Config: cfg}).Permissions() {
		assert.True(t, allowed(t, ctx, as, p.Verb, p.Group, p.Resource, p.Subresource, p.Namespace), "%s", p)
	}
	for _, d := range []struct{ verb, group, res, sub, ns string }{
		{"list", "", "secrets", "", "other"},
		{"get", "", "secrets", "", "other"},
		{"get", "", "secrets", "", "default"},
		{"list", "", "secrets", "", est.InternalNamespace},
		{"create", "", "secrets", "", est.Namespace},
		{"update", "", "secrets", "", est.Namespace},
		{"delete", "", "secrets", "", est.Namespace},
		{"watch", "", "secrets", "", est.Namespace},
		{"get", "", "pods", "", est.InternalNamespace},
		{"delete", "", "pods", "", est.InternalNamespace},
		{"create", "", "pods", "exec", est.Namespace},
		{"patch", "apps", "deployments", "", est.InternalNamespace},
		{"list", "apps", "deployments", "", est.InternalNamespace},
		{"patch", "apps", "deployments", "scale", est.InternalNamespace},
		{"get", "apps", "deployments", "", est.Namespace},
		{"get", "", "configmaps", "", est.Namespace},
	} {
		assert.False(t, allowed(t, ctx, as, d.verb, d.group, d.res, d.sub, d.ns), "%s %s/%s/%s in %s must be denied", d.verb, d.group, d.res, d.sub, d.ns)
	}

	// The backup, with the options the pod mounts and the account's own token.
	_, token, err := k.TokenKubeconfig(ctx, est.Namespace, sa)
	require.NoError(t, err)
	claimDir := filepath.Join(t.TempDir(), "pvc") // what the claim holds across runs
	runBackup := func(wantDB bool) map[string]any {
		t.Helper()
		cm, err := cs.CoreV1().ConfigMaps(est.Namespace).Get(ctx, sa, metav1.GetOptions{})
		require.NoError(t, err)
		var args map[string]any
		require.NoError(t, json.Unmarshal([]byte(cm.Data["backup.json"]), &args))
		assert.Equal(t, "/backups", args["output_dir"])
		assert.Equal(t, "cluster-a", args["estate_name"])
		args["output_dir"] = claimDir
		r := runInCluster(t, bin, args, k, est.Namespace, token)
		require.Nil(t, r.Out["failed"], r.Out["msg"])
		assert.Zero(t, r.Code)
		assert.NotContains(t, r.Stdout+r.Stderr, token)
		assert.NotContains(t, r.Stdout+r.Stderr, dbPassword)
		rep, err := archive.Verify(ctx, r.Out["archive"].(string), archive.VerifyOptions{RequireChecksum: true, ExpectedDeploymentType: "kubernetes"})
		require.NoError(t, err)
		assert.Equal(t, wantDB, rep.Components.Database)
		assert.True(t, rep.Components.PKI)
		return args
	}
	args := runBackup(true)
	assert.Nil(t, args["db_access"], "pods/exec by default")
	// The pod's token is what the run uses: another account's, without the Roles, is refused
	// by name and writes nothing (the job fails: exit status 1).
	_, other, err := k.TokenKubeconfig(ctx, est.Namespace, "nobody")
	require.NoError(t, err)
	r := runInCluster(t, bin, args, k, est.Namespace, other)
	assert.Equal(t, true, r.Out["failed"])
	assert.Equal(t, 1, r.Code)
	assert.Contains(t, r.Out["msg"], "system:serviceaccount:"+est.Namespace+":nobody lacks 7 permission(s)")
	archives, err := filepath.Glob(filepath.Join(claimDir, "flightctl-backup-*.tar.gz"))
	require.NoError(t, err)
	assert.Len(t, archives, 1)

	// db_access direct: the Role loses pods/exec, and the backup reaches the database over TCP;
	// with a retention, a second container prunes the claim after the backup succeeded.
	// (db_host 127.0.0.1 is the module's default, which with direct access means the Service
	// flightctl-db.<internal namespace>.svc: the test database is named localhost.)
	vars["flightctl_dr_db_access"] = "direct"
	vars["flightctl_dr_db_host"] = "localhost"
	vars["flightctl_dr_retention"] = map[string]any{"keep_last": 1}
	out, err = runRole(t, collections, "cronjob", vars)
	require.NoError(t, err, out)
	cj, err = cs.BatchV1().CronJobs(est.Namespace).Get(ctx, sa, metav1.GetOptions{})
	require.NoError(t, err)
	pod = cj.Spec.JobTemplate.Spec.Template.Spec
	require.Len(t, pod.InitContainers, 1)
	require.Len(t, pod.Containers, 1)
	assert.Equal(t, []string{"backup", "prune"}, []string{pod.InitContainers[0].Name, pod.Containers[0].Name}, "the retention runs after a backup that succeeded")
	cfg.DBAccess = estate.DBAccessDirect
	want = permissionSet((&estate.KubernetesBackup{Config: cfg}).Permissions())
	assert.Equal(t, want, grantedSet(t, ctx, cs, est.Namespace, sa, est.Namespace, est.InternalNamespace))
	assert.False(t, allowed(t, ctx, as, "create", "", "pods", "exec", est.InternalNamespace))
	assert.False(t, allowed(t, ctx, as, "list", "", "pods", "", est.InternalNamespace))
	args = runBackup(true)
	assert.Equal(t, "direct", args["db_access"])
	assert.Equal(t, "localhost", args["db_host"])
	archives, err = filepath.Glob(filepath.Join(claimDir, "flightctl-backup-*.tar.gz"))
	require.NoError(t, err)
	require.Len(t, archives, 2)
	sort.Strings(archives)

	cm, err := cs.CoreV1().ConfigMaps(est.Namespace).Get(ctx, sa, metav1.GetOptions{})
	require.NoError(t, err)
	var prune map[string]any
	require.NoError(t, json.Unmarshal([]byte(cm.Data["prune.json"]), &prune))
	assert.Equal(t, "/backups", prune["path"])
	prune["path"] = claimDir
	r = moduletest.Run(t, moduletest.Build(t, "flightctl.dr/modules/flightctl_archive_prune"), prune)
	require.Nil(t, r.Out["failed"], r.Out["msg"])
	left, err := filepath.Glob(filepath.Join(claimDir, "flightctl-backup-*.tar.gz"))
	require.NoError(t, err)
	assert.Equal(t, archives[1:], left, "keep_last 1 keeps the newest archive")

	// absent: the CronJob and its account go, the archives' claim stays.
	vars["flightctl_dr_cronjob_state"] = "absent"
	out, err = runRole(t, collections, "cronjob", vars)
	require.NoError(t, err, out)
	_, err = cs.BatchV1().CronJobs(est.Namespace).Get(ctx, sa, metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "CronJob removed: %v", err)
	_, err = cs.RbacV1().Roles(est.InternalNamespace).Get(ctx, sa, metav1.GetOptions{})
	assert.True(t, apierrors.IsNotFound(err), "Role removed: %v", err)
	_, err = cs.CoreV1().PersistentVolumeClaims(est.Namespace).Get(ctx, claim, metav1.GetOptions{})
	assert.NoError(t, err, "the claim holding the archives is kept")
	assert.True(t, strings.Contains(out, "Delete the CronJob"), out)
}

// TestCronJobRoleRefusesWithoutImage: the role says which variable to set.
func TestCronJobRoleRefusesWithoutImage(t *testing.T) {
	testbed.Need(t, "ansible-playbook")
	out, err := runRole(t, collectionsPath(t), "cronjob", map[string]any{"flightctl_dr_cronjob_apply": false})
	require.Error(t, err)
	assert.Contains(t, out, "set flightctl_dr_cronjob_image")
}
