package sandbox

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"gopkg.in/yaml.v3"

	"flightctl.dr/internal/podman"
	"flightctl.dr/internal/testbed"
	"flightctl.dr/internal/units"
)

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// Vars are the variables the playbooks need, by name; the inventory and the env file carry
// the same values (env names upper-cased).
func (s *State) Vars() map[string]any {
	v := map[string]any{
		"sandbox_dir":                      s.Dir,
		"flightctl_dr_deployment_type":     "podman",
		"flightctl_dr_server_version":      s.ServerVersion,
		"flightctl_dr_pki_dir":             s.PKIDir,
		"flightctl_dr_encryption_dir":      s.EncryptionDir,
		"flightctl_dr_config_file":         s.ConfigFile,
		"flightctl_dr_db_access":           s.DB.Access,
		"flightctl_dr_db_host":             s.DB.Host,
		"flightctl_dr_db_port":             s.DB.Port,
		"flightctl_dr_db_name":             s.DB.Name,
		"flightctl_dr_db_user":             s.DB.User,
		"flightctl_dr_db_password":         s.DB.Password,
		"flightctl_dr_db_admin_user":       s.DB.AdminUser,
		"flightctl_dr_db_admin_password":   s.DB.AdminPassword,
		"sandbox_db_socket_dir":            s.DB.SocketDir,
		"flightctl_dr_kv_host":             s.KV.Host,
		"flightctl_dr_kv_port":             s.KV.Port,
		"flightctl_dr_kv_password":         s.KV.Password,
		"flightctl_dr_systemd_scope":       s.Systemd.Scope,
		"flightctl_dr_systemd_bus_address": s.Systemd.BusAddress,
		"sandbox_xdg_runtime_dir":          s.Systemd.RuntimeDir,
		"sandbox_units":                    s.Units,
		"flightctl_dr_app_units":           ApplicationUnits,
	}
	if s.Podman {
		v["flightctl_dr_db_container"] = s.DB.Container
		v["flightctl_dr_kv_container"] = s.KV.Container
		v["flightctl_dr_api_container"] = s.APIContainer
		v["flightctl_dr_pam_volume"] = s.PAMVolume
		v["sandbox_db_user_secret"] = s.DB.UserSecret
		v["sandbox_kv_secret"] = s.KV.Secret
		v["sandbox_containers_conf"] = s.ContainersConf
	} else {
		v["flightctl_dr_pam_volume"] = ""
	}
	if s.Kubernetes != nil {
		s.kubeVars(v)
	}
	s.s3Vars(v)
	return v
}

// environment is what a module run against the sandbox needs in its environment.
func (s *State) environment() map[string]string {
	env := map[string]string{}
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	return env
}

func writeEnvFile(s *State) error {
	var b strings.Builder
	b.WriteString("# Flight Control sandbox: source this file (. " + filepath.Join(s.Dir, EnvFile) + ")\n")
	envKeys := make([]string, 0)
	env := s.environment()
	for k := range env {
		envKeys = append(envKeys, k)
	}
	sort.Strings(envKeys)
	for _, k := range envKeys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(env[k]))
	}
	vars := s.Vars()
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var val string
		switch x := vars[k].(type) {
		case []string:
			val = strings.Join(x, " ")
		default:
			val = fmt.Sprint(x)
		}
		fmt.Fprintf(&b, "export %s=%s\n", strings.ToUpper(k), shellQuote(val))
	}
	return os.WriteFile(filepath.Join(s.Dir, EnvFile), []byte(b.String()), 0o600)
}

func writeInventory(s *State) error {
	host := s.Vars()
	host["ansible_connection"] = "local"
	host["ansible_python_interpreter"] = "/usr/bin/python3"
	host["flightctl_dr_environment"] = s.environment()
	inv := map[string]any{
		"all": map[string]any{
			"children": map[string]any{
				"flightctl_servers": map[string]any{
					"hosts": map[string]any{"sandbox": host},
				},
			},
		},
	}
	b, err := yaml.Marshal(inv)
	if err != nil {
		return err
	}
	header := "# Flight Control sandbox inventory (" + s.Dir + "); holds test credentials.\n"
	return os.WriteFile(filepath.Join(s.Dir, InventoryFile), append([]byte(header), b...), 0o600)
}

// Report is what Status found.
type Report struct {
	Dir            string            `json:"dir"`
	ServerVersion  string            `json:"server_version"`
	SystemdRunning bool              `json:"systemd_running"`
	Units          map[string]string `json:"units"`
	DBReachable    bool              `json:"db_reachable"`
	DBError        string            `json:"db_error,omitempty"`
	Devices        map[string]int    `json:"devices_by_status,omitempty"`
	KVReachable    bool              `json:"kv_reachable"`
	KVError        string            `json:"kv_error,omitempty"`
	KVKeys         int64             `json:"kv_keys"`
	Containers     map[string]string `json:"containers,omitempty"`
	// Kubernetes is set for the Kubernetes form: the test cluster and the install in it.
	Kubernetes *KubeReport `json:"kubernetes,omitempty"`
	// Up is true when the manager runs (the Kubernetes form: the API server, the exec node,
	// the database pod and every Deployment), every unit is active and DB and KV answer.
	Up bool `json:"up"`
}

// Status checks every piece of the sandbox in dir.
func Status(ctx context.Context, dir string) (*Report, error) {
	st, err := Load(dir)
	if err != nil {
		return nil, err
	}
	r := &Report{Dir: st.Dir, ServerVersion: st.ServerVersion, Units: map[string]string{}}
	if st.Systemd.Dir != "" {
		if sd, err := testbed.AttachSystemd(st.Systemd.Dir, nil); err == nil {
			r.SystemdRunning = sd.Running()
		}
	}
	allActive := r.SystemdRunning
	if st.Kubernetes != nil {
		// No systemd in the Kubernetes form: the cluster stands in for the units.
		r.Kubernetes, allActive = kubeStatus(ctx, st)
	}
	if r.SystemdRunning {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		m, err := units.Connect(cctx, units.ConnectOptions{Scope: units.ScopeUser, BusAddress: st.Systemd.BusAddress})
		cancel()
		if err == nil {
			states, err := m.States(ctx, st.Units)
			m.Close()
			if err == nil {
				for _, s := range states {
					r.Units[s.Name] = s.ActiveState
					allActive = allActive && s.Active()
				}
			}
		} else {
			allActive = false
		}
	}
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	dsn := fmt.Sprintf("host=%s port=%d dbname=%s user=%s password=%s sslmode=disable connect_timeout=3",
		st.DB.Host, st.DB.Port, st.DB.Name, st.DB.User, st.DB.Password)
	if conn, err := pgx.Connect(dctx, dsn); err != nil {
		r.DBError = err.Error()
	} else {
		r.DBReachable = true
		r.Devices = map[string]int{}
		rows, err := conn.Query(dctx, `SELECT coalesce(status->'summary'->>'status', 'none'), count(*) FROM devices WHERE deleted_at IS NULL GROUP BY 1`)
		if err == nil {
			for rows.Next() {
				var s string
				var n int
				if rows.Scan(&s, &n) == nil {
					r.Devices[s] = n
				}
			}
			rows.Close()
		}
		conn.Close(context.Background())
	}
	kv := redis.NewClient(&redis.Options{Addr: st.KV.Host + ":" + strconv.Itoa(st.KV.Port), Password: st.KV.Password, DialTimeout: 3 * time.Second})
	defer kv.Close()
	if n, err := kv.DBSize(dctx).Result(); err != nil {
		r.KVError = err.Error()
	} else {
		r.KVReachable, r.KVKeys = true, n
	}
	if st.Podman {
		r.Containers = map[string]string{}
		cli := &podman.Client{}
		for _, c := range st.Containers {
			info, err := cli.InspectContainer(ctx, c)
			if err != nil {
				r.Containers[c] = "absent"
				continue
			}
			r.Containers[c] = info.State
		}
	}
	r.Up = allActive && r.DBReachable && r.KVReachable
	return r, nil
}
