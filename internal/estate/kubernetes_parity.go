package estate

import (
	"context"
	"fmt"
	"sort"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"flightctl.dr/internal/restore"
)

var (
	_ restore.PasswordSyncer = (*KubernetesRestore)(nil)
	_ restore.JournalKeeper  = (*KubernetesRestore)(nil)
	_ restore.WorkloadWords  = (*kubeWorkloads)(nil)
)

// The Helm chart's database credentials Secrets (internal namespace): user and password
// keys, and the chart's user when the user key is absent.
var kubeDBUserSecrets = []struct {
	Secret, UserKey, PasswordKey, DefaultUser string
}{
	{KubeDBAppSecret, "user", "userPassword", "flightctl_app"},
	{"flightctl-db-migration-secret", "migrationUser", "migrationPassword", "flightctl_migrator"},
	{"flightctl-db-admin-secret", "masterUser", "masterPassword", AdminUser},
}

// SyncPasswords sets the database users of the chart's credentials Secrets (application,
// migration and admin users) to the passwords those Secrets hold now, before the units stop, as
// upstream's Podman restore does from the Podman secrets: a database restored from another
// cluster, or a Secret regenerated since the backup, would otherwise lock the server out.
// The application user's password is db_password when it is given. The statements go to
// psql in the database pod on its stdin, never in argv. A Secret that is missing leaves its
// user as it is and says so.
func (k *KubernetesRestore) SyncPasswords(ctx context.Context) (map[string]string, error) {
	if k.external {
		return nil, nil
	}
	c := k.Config
	ins := c.InternalNamespace
	result := map[string]string{}
	passwords := map[string]string{}
	how := map[string]string{}
	for i, s := range kubeDBUserSecrets {
		if i == 0 && c.DBPassword != "" {
			user := orDefault(c.DBUser, s.DefaultUser)
			passwords[user], how[user] = c.DBPassword, "set to db_password"
			continue
		}
		sec, err := k.Client.GetSecret(ctx, ins, s.Secret)
		if apierrors.IsNotFound(err) {
			if _, ok := passwords[s.DefaultUser]; !ok {
				result[s.DefaultUser] = fmt.Sprintf("not set: no Secret %s/%s", ins, s.Secret)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read Secret %s/%s: %w", ins, s.Secret, err)
		}
		user := orDefault(strings.TrimSpace(string(sec.Data[s.UserKey])), s.DefaultUser)
		if _, dup := passwords[user]; dup {
			continue
		}
		pw := string(sec.Data[s.PasswordKey])
		if pw == "" {
			result[user] = fmt.Sprintf("not set: Secret %s/%s has no %s", ins, s.Secret, s.PasswordKey)
			continue
		}
		passwords[user], how[user] = pw, fmt.Sprintf("set from Secret %s/%s", ins, s.Secret)
		delete(result, user)
	}
	db := k.Database().(*restore.PsqlDatabase)
	if err := setPasswords(ctx, db, passwords, how, result); err != nil {
		return result, err
	}
	if pw, ok := passwords[k.Restore.DBAdminUser]; ok && c.DBAccess == DBAccessDirect && k.Restore.DBAdminPassword != "" {
		// The restore goes on as this user (it drops the old database at the end).
		k.Restore.DBAdminPassword = pw
	}
	return result, nil
}

// WorkloadKind: the workloads of a Kubernetes estate are Deployments.
func (w *kubeWorkloads) WorkloadKind() string { return "Deployments" }

// ManualStop is the kubectl command that scales the Deployments to 0 by hand, one per
// namespace.
func (w *kubeWorkloads) ManualStop(units []string) string {
	byNS := map[string][]string{}
	for _, u := range units {
		ns, name, _ := strings.Cut(u, "/")
		byNS[ns] = append(byNS[ns], name)
	}
	nss := make([]string, 0, len(byNS))
	for ns := range byNS {
		nss = append(nss, ns)
	}
	sort.Strings(nss)
	cmds := make([]string, 0, len(nss))
	for _, ns := range nss {
		cmds = append(cmds, fmt.Sprintf("kubectl scale deployment -n %s %s --replicas=0", ns, strings.Join(byNS[ns], " ")))
	}
	return strings.Join(cmds, "; ")
}
