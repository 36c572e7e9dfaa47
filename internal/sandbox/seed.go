package sandbox

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
)

// Organizations seeded besides the default one the migration inserts.
var seedOrgs = []struct{ ID, Display, External string }{
	{"00000000-0000-0000-0000-000000000000", "Default", "default"},
	{"aaaaaaaa-0000-0000-0000-00000000000b", "Retail", "retail"},
	{"cccccccc-0000-0000-0000-00000000000c", "Factory", "factory"},
}

var seedFleets = []string{"fleet-east", "fleet-west"}

// deviceKinds is the mix of device states, repeated over the devices.
var deviceKinds = []string{
	"Online", "Online", "Degraded", "Online", "Unknown", "Online", "Decommissioned",
	"Online", "Decommissioning", "Deleted", "AwaitingReconnect", "Error", "Online", "Degraded",
}

// SeedCounts says what was seeded.
type SeedCounts struct {
	Organizations      int            `json:"organizations"`
	Devices            int            `json:"devices"`
	DevicesByStatus    map[string]int `json:"devices_by_status"`
	DeletedDevices     int            `json:"deleted_devices"`
	Fleets             int            `json:"fleets"`
	TemplateVersions   int            `json:"template_versions"`
	EnrollmentRequests int            `json:"enrollment_requests"`
	ApprovedRequests   int            `json:"approved_enrollment_requests"`
	Events             int            `json:"events"`
	KVKeys             int            `json:"kv_keys"`
}

// deviceStatus builds the status a gorm-written device carries (UPSTREAM §5), with the
// summary, updated and lifecycle parts set for the kind.
func deviceStatus(kind string, renderedVersion int) map[string]any {
	summary := map[string]any{"status": kind}
	updated := map[string]any{"status": "UpToDate"}
	lifecycle := map[string]any{"status": "Enrolled"}
	switch kind {
	case "Unknown":
		updated = map[string]any{"status": "Unknown"}
		summary["info"] = "Device is disconnected (last seen more than 5m0s)."
	case "Degraded":
		summary["info"] = "CPU utilization is above the warning threshold."
	case "Error":
		summary["info"] = "Application flightctl-demo failed to start."
		updated = map[string]any{"status": "OutOfDate", "info": "Failed to update to renderedVersion: 4"}
	case "Decommissioned", "Decommissioning":
		summary = map[string]any{"status": "Unknown", "info": "Device is decommissioned."}
		lifecycle = map[string]any{"status": kind}
	case "AwaitingReconnect":
		summary = map[string]any{"status": "AwaitingReconnect", "info": "Device has not reconnected since restore to confirm its current state."}
		updated = map[string]any{"status": "Unknown"}
	case "Deleted":
		summary = map[string]any{"status": "Online", "info": "Device's application workloads are healthy."}
	default:
		summary["info"] = "Device's application workloads are healthy."
	}
	return map[string]any{
		"os":                  map[string]any{"image": "quay.io/flightctl/rhel:9.5", "imageDigest": "sha256:4b2d" + hex.EncodeToString([]byte(kind))[:8]},
		"config":              map[string]any{"renderedVersion": fmt.Sprint(renderedVersion)},
		"summary":             summary,
		"updated":             updated,
		"integrity":           map[string]any{"status": "Unknown"},
		"lifecycle":           lifecycle,
		"resources":           map[string]any{"cpu": "Healthy", "disk": "Healthy", "memory": "Healthy"},
		"conditions":          []any{map[string]any{"type": "Updating", "reason": "Updated", "status": "False", "message": "", "lastTransitionTime": "2026-01-05T10:00:00Z"}},
		"systemInfo":          map[string]any{"bootID": "b00t-" + kind, "agentVersion": "v0.10.0", "architecture": "amd64", "operatingSystem": "linux"},
		"applications":        []any{},
		"applicationsSummary": map[string]any{"status": "Healthy"},
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// seedDatabase writes organizations, fleets, template versions, devices with a mix of
// states and last_seen timestamps, enrollment requests and events, as the server writes
// them.
func seedDatabase(ctx context.Context, conn *pgx.Conn, devices int) (SeedCounts, error) {
	counts := SeedCounts{DevicesByStatus: map[string]int{}}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return counts, err
	}
	defer tx.Rollback(ctx)
	now := time.Now().UTC().Truncate(time.Millisecond)

	for _, o := range seedOrgs {
		if _, err := tx.Exec(ctx, `INSERT INTO organizations (id, display_name, external_id, created_at, updated_at)
			VALUES ($1, $2, $3, $4, $4) ON CONFLICT (id) DO NOTHING`, o.ID, o.Display, o.External, now.Add(-90*24*time.Hour)); err != nil {
			return counts, fmt.Errorf("organizations: %w", err)
		}
		counts.Organizations++
		for _, f := range seedFleets {
			spec := map[string]any{
				"selector": map[string]any{"matchLabels": map[string]string{"fleet": f}},
				"template": map[string]any{
					"metadata": map[string]any{"labels": map[string]string{"fleet": f}},
					"spec":     map[string]any{"os": map[string]any{"image": "quay.io/flightctl/rhel:9.5"}, "config": []any{}},
				},
			}
			status := map[string]any{"conditions": []any{}, "devicesSummary": map[string]any{"total": 0}, "rollout": map[string]any{"currentBatch": 0}}
			if _, err := tx.Exec(ctx, `INSERT INTO fleets (org_id, name, owner, labels, annotations, generation, resource_version, created_at, updated_at, spec, status)
				VALUES ($1, $2, NULL, $3, $4, 1, 3, $5, $5, $6, $7)`,
				o.ID, f, mustJSON(map[string]string{"env": "prod"}), mustJSON(map[string]string{"fleet-controller/templateVersion": f + "-1"}),
				now.Add(-60*24*time.Hour), mustJSON(spec), mustJSON(status)); err != nil {
				return counts, fmt.Errorf("fleets: %w", err)
			}
			counts.Fleets++
			if _, err := tx.Exec(ctx, `INSERT INTO template_versions (org_id, name, fleet_name, labels, annotations, generation, resource_version, created_at, updated_at, spec, status)
				VALUES ($1, $2, $3, '{}', NULL, 1, 1, $4, $4, $5, $6)`,
				o.ID, f+"-1", f, now.Add(-30*24*time.Hour), mustJSON(map[string]any{"fleet": f}),
				mustJSON(map[string]any{"os": map[string]any{"image": "quay.io/flightctl/rhel:9.5"}, "conditions": []any{}})); err != nil {
				return counts, fmt.Errorf("template versions: %w", err)
			}
			counts.TemplateVersions++
		}
	}

	for i := 0; i < devices; i++ {
		org := seedOrgs[i%len(seedOrgs)]
		kind := deviceKinds[i%len(deviceKinds)]
		fleet := seedFleets[(i/len(seedOrgs))%len(seedFleets)]
		name := fmt.Sprintf("device-%04d", i)
		rv := 1 + i%9
		renderedVersion := 2 + i%5
		var annotations any // SQL NULL: the API gave none
		switch kind {
		case "Online", "Degraded", "Error":
			annotations = mustJSON(map[string]string{"device-controller/renderedVersion": fmt.Sprint(renderedVersion)})
		case "AwaitingReconnect":
			annotations = mustJSON(map[string]string{"device-controller/awaitingReconnect": "true", "device-controller/renderedVersion": fmt.Sprint(renderedVersion)})
		}
		var deletedAt any
		if kind == "Deleted" {
			deletedAt = now.Add(-2 * time.Hour)
		}
		labels := map[string]string{"fleet": fleet, "region": []string{"east", "west"}[i%2], "site": fmt.Sprintf("site-%02d", i%7)}
		spec := map[string]any{"os": map[string]any{"image": "quay.io/flightctl/rhel:9.5"}, "config": []any{}}
		created := now.Add(-time.Duration(40*24-i) * time.Hour)
		if _, err := tx.Exec(ctx, `INSERT INTO devices (org_id, name, owner, labels, annotations, generation, resource_version, created_at, updated_at, deleted_at,
				alias, spec, status, service_conditions, rendered_config, render_timestamp, rendered_applications, rendered_os)
			VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9, $10, $11, $12, '{"conditions": []}', NULL, '0001-01-01 00:00:00+00', NULL, NULL)`,
			org.ID, name, "Fleet/"+fleet, mustJSON(labels), annotations, rv, created, now.Add(-time.Duration(i)*time.Minute), deletedAt,
			fmt.Sprintf("kiosk-%d", i), mustJSON(spec), mustJSON(deviceStatus(kind, renderedVersion))); err != nil {
			return counts, fmt.Errorf("devices: %w", err)
		}
		// The insert trigger made the device_timestamps row; the agent's heartbeats set it.
		var lastSeen any
		switch kind {
		case "Online", "Degraded", "Error", "Deleted":
			lastSeen = now.Add(-time.Duration(10+i) * time.Second)
		case "Unknown", "Decommissioning":
			lastSeen = now.Add(-time.Duration(3+i%5) * 24 * time.Hour)
		case "Decommissioned":
			lastSeen = now.Add(-20 * 24 * time.Hour)
		}
		if _, err := tx.Exec(ctx, `UPDATE device_timestamps SET last_seen = $3 WHERE org_id = $1 AND name = $2`, org.ID, name, lastSeen); err != nil {
			return counts, fmt.Errorf("device timestamps: %w", err)
		}
		if kind == "Deleted" {
			counts.DeletedDevices++
		} else {
			counts.DevicesByStatus[kind]++
		}
		counts.Devices++
	}

	csr, err := sampleCSR()
	if err != nil {
		return counts, err
	}
	for i := 0; i < 6; i++ {
		org := seedOrgs[i%len(seedOrgs)]
		name := fmt.Sprintf("er-%016x", 0xfeed0000+i)
		status := map[string]any{"conditions": []any{}}
		spec := map[string]any{"csr": csr, "labels": map[string]string{"site": fmt.Sprintf("site-%02d", i)}}
		switch i % 3 {
		case 0: // approved: the device exists
			status = map[string]any{
				"approval":    map[string]any{"approved": true, "approvedAt": now.Add(-24 * time.Hour).Format(time.RFC3339), "approvedBy": "admin", "labels": map[string]string{"site": "site-00"}},
				"certificate": csr,
				"conditions":  []any{map[string]any{"type": "Approved", "status": "True", "reason": "ManuallyApproved", "message": "Approved by admin", "lastTransitionTime": now.Add(-24 * time.Hour).Format(time.RFC3339)}},
			}
			counts.ApprovedRequests++
		case 1: // pending
		case 2: // pending, from a device that already rendered a version
			spec["knownRenderedVersion"] = "3"
		}
		if _, err := tx.Exec(ctx, `INSERT INTO enrollment_requests (org_id, name, owner, labels, annotations, generation, resource_version, created_at, updated_at, spec, status)
			VALUES ($1, $2, NULL, '{}', NULL, 1, $3, $4, $4, $5, $6)`,
			org.ID, name, 1+i%3, now.Add(-time.Duration(48-i)*time.Hour), mustJSON(spec), mustJSON(status)); err != nil {
			return counts, fmt.Errorf("enrollment requests: %w", err)
		}
		counts.EnrollmentRequests++
	}

	events := []struct{ reason, kind, object, msg string }{
		{"ResourceCreated", "Fleet", "fleet-east", "Fleet was created successfully."},
		{"DeviceApplicationHealthy", "Device", "device-0000", "Device's application workloads are healthy."},
		{"DeviceCPUWarning", "Device", "device-0002", "CPU utilization has reached a warning level."},
		{"DeviceDisconnected", "Device", "device-0004", "Device is disconnected (last seen more than 5m0s)."},
		{"EnrollmentRequestApproved", "EnrollmentRequest", "er-00000000feed0000", "Enrollment request approved by admin."},
	}
	for i, e := range events {
		if _, err := tx.Exec(ctx, `INSERT INTO events (org_id, name, owner, labels, annotations, generation, resource_version, created_at, updated_at,
				reason, source_component, actor, type, message, details, involved_object_name, involved_object_kind)
			VALUES ($1, $2, NULL, NULL, '{}', NULL, NULL, $3, $3, $4, 'flightctl-api', 'user:admin', 'Normal', $5, 'null', $6, $7)`,
			seedOrgs[0].ID, fmt.Sprintf("%08x-0000-4000-8000-%012x", 0xe0e0+i, i), now.Add(-time.Duration(i)*time.Hour),
			e.reason, e.msg, e.object, e.kind); err != nil {
			return counts, fmt.Errorf("events: %w", err)
		}
		counts.Events++
	}
	return counts, tx.Commit(ctx)
}

// sampleCSR returns a PEM certificate request like the ones agents send.
func sampleCSR() (string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "device-enrollment"}}, key)
	if err != nil {
		return "", err
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// seedKV writes keys as the server's caches and queues hold them: template-version caches
// under v1/<org>/<fleet>/<tv>/..., a quadlet file cache, a checkpoint and a task stream.
func seedKV(ctx context.Context, c *redis.Client) (int, error) {
	n := 0
	pipe := c.TxPipeline()
	for _, o := range seedOrgs {
		for _, f := range seedFleets {
			prefix := fmt.Sprintf("v1/%s/%s/%s-1", o.ID, f, f)
			pipe.Set(ctx, prefix+"/repo-url/flightctl-demos", "https://github.com/flightctl/flightctl-demos", 0)
			pipe.Set(ctx, prefix+"/git-revision/flightctl-demos/main", "3f1c2a9d0b7e4c55a1e2d3c4b5a69788f0e1d2c3", 0)
			pipe.Set(ctx, prefix+"/http/config-server/etc/motd", "Welcome to "+f, 0)
			n += 3
		}
	}
	sum := sha256.Sum256([]byte("[Container]\nImage=quay.io/flightctl/demo:latest\n"))
	pipe.Set(ctx, "v1/vm-quadlet-files/"+hex.EncodeToString(sum[:]), "[Container]\nImage=quay.io/flightctl/demo:latest\n", 0)
	pipe.Set(ctx, "global_checkpoint", time.Now().UTC().Format(time.RFC3339Nano), 0)
	pipe.XAdd(ctx, &redis.XAddArgs{Stream: "task-queue", Values: map[string]any{"task": "fleet-rollout", "org": seedOrgs[0].ID, "fleet": "fleet-east"}})
	n += 3
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	return n, nil
}
