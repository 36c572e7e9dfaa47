package devprep

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// DatabaseCounts are what the database part of device preparation changed.
type DatabaseCounts struct {
	DevicesUpdated            int  `json:"devices_updated"`
	TimestampsCleared         int  `json:"timestamps_cleared"`
	EnrollmentRequestsUpdated int  `json:"enrollment_requests_updated"`
	EventCreated              bool `json:"event_created"`
	JSONRepaired              int  `json:"json_repaired"`
	// After is what the prepared database held right after DatabaseUpdateScript, read by
	// PreparedReadsScript: the counts Run reports and the devices whose keys it
	// writes. With it Run reads no row in the downtime; without it (a restore resumed in
	// another process: it is never journaled) Run reads them from the database.
	After *AfterState `json:"-"`
}

// AfterState is the prepared database as PreparedReadsScript saw it.
type AfterState struct {
	// counts is what readCounts gives on the prepared database.
	counts Counts
	// devices are those whose awaiting-reconnect key must exist (keyedDevicesSQL), in
	// the database's order.
	devices []device
}

// Keys is the number of awaiting-reconnect keys the prepared database needs.
func (a *AfterState) Keys() int { return len(a.devices) }

// PreparedTables are the tables DatabaseUpdateScript writes, as pg_dump names them.
var PreparedTables = []string{"public.devices", "public.device_timestamps", "public.enrollment_requests"}

// DatabaseUpdateScript is the database part of device preparation without its event (SPEC
// §5 steps 2 and 3: devices, device_timestamps, enrollment requests) as one SQL
// statement, so one transaction, with the rows and values Run's transaction gives. A
// restore runs it on its temporary database as the admin user once the data is loaded and
// before the indexes of PreparedTables are built, beside the index builds of the other
// tables (events, the largest, among them), while the server still runs on the live
// database: no index is maintained by the update, and only the KV part
// (Options.Prepared) is left for when the units are stopped. EventScript then records the
// event (step 5) once every index exists. It prints one line, "devices|timestamps|
// enrollment requests|events|JSON repaired" with 0 events (ParseDatabaseCounts).
func DatabaseUpdateScript() string {
	return `WITH ` + updateDevicesCTE + `, ers AS (
` + updateEnrollmentRequestsSQL + `
	RETURNING 1
)
SELECT (SELECT count(*) FROM updated) || '|' || (SELECT count(*) FROM cleared) || '|' || (SELECT count(*) FROM ers) || '|' || 0
	|| '|' || ((SELECT count(*) FROM devices AS d WHERE ` + devQualifies + ` AND (` + notObject("d.status") + ` OR ` + notObject("d.annotations") + `))
		+ (SELECT count(*) FROM enrollment_requests AS e WHERE ` + erQualifies + ` AND ` + notObject("e.annotations") + `));
`
}

// EventScript records the SystemRestored event named after restoreID, with the number of
// devices DatabaseUpdateScript updated, unless it exists; it prints 1 when it recorded
// it, else 0. Not ON CONFLICT, which needs a unique index on (org_id, name) that an
// unexpected schema may not have.
func EventScript(restoreID string, devicesUpdated int) string {
	org, name := literal(DefaultOrgID)+"::uuid", literal(eventName(restoreID))
	return `WITH ev AS (
` + insertEventColumns + `
	SELECT ` + org + `, ` + name + `, ` + insertEventFixed + `,
		` + literal(EventMessage(devicesUpdated)) + `, ` + insertEventTail + `
	WHERE NOT EXISTS (SELECT 1 FROM events WHERE org_id = ` + org + ` AND name = ` + name + `)
	RETURNING 1
)
SELECT count(*) FROM ev;
`
}

func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// ParseDatabaseCounts reads DatabaseUpdateScript's output line.
func ParseDatabaseCounts(out string) (*DatabaseCounts, error) {
	f := strings.Split(strings.TrimSpace(out), "|")
	if len(f) != 5 {
		return nil, fmt.Errorf("device preparation: unexpected answer %q from the database", out)
	}
	n := make([]int, 5)
	for i, s := range f {
		v, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("device preparation: unexpected answer %q from the database", out)
		}
		n[i] = v
	}
	return &DatabaseCounts{DevicesUpdated: n[0], TimestampsCleared: n[1], EnrollmentRequestsUpdated: n[2], EventCreated: n[3] == 1, JSONRepaired: n[4]}, nil
}

// PreparedReadsScript is what the KV part of device preparation needs from the prepared
// database, read after DatabaseUpdateScript and EventScript: the counts Run reports, then
// one line per device whose key must exist ("<org id> <name as a JSON string>"). It
// changes nothing. A restore runs it before anything is stopped; ParsePrepared reads
// DatabaseUpdateScript's line followed by its output, and Run with those counts as
// Options.Prepared reads no row.
func PreparedReadsScript() string {
	return afterCountsSQL + ";\n" + keyedDevicesListSQL + ";\n"
}

// afterCountsSQL prints readCounts' ten numbers on one line.
var afterCountsSQL = `SELECT concat_ws('|', d.c1, d.c2, d.c3, d.c4, d.c5, e.c1, e.c2, e.c3, e.c4, o.c1)
FROM (` + deviceCountsSQL + `) AS d(c1, c2, c3, c4, c5),
	(` + erCountsSQL + `) AS e(c1, c2, c3, c4),
	(` + organizationsCountSQL + `) AS o(c1)`

// keyedDevicesListSQL is keyedDevicesSQL as text lines that survive any device name.
var keyedDevicesListSQL = `SELECT k.org || ' ' || to_json(k.name)::text FROM (` + keyedDevicesSQL + `) AS k(org, name)`

// ParsePrepared reads DatabaseUpdateScript's line followed by PreparedReadsScript's
// output: the update's counts, with After.
func ParsePrepared(out string) (*DatabaseCounts, error) {
	out = strings.TrimSpace(out)
	first, rest, _ := strings.Cut(out, "\n")
	c, err := ParseDatabaseCounts(first)
	if err != nil {
		return nil, err
	}
	second, rest, _ := strings.Cut(rest, "\n")
	f := strings.Split(strings.TrimSpace(second), "|")
	if len(f) != 10 {
		return nil, fmt.Errorf("device preparation: unexpected answer %q from the database", second)
	}
	n := make([]int, len(f))
	for i, s := range f {
		if n[i], err = strconv.Atoi(s); err != nil {
			return nil, fmt.Errorf("device preparation: unexpected answer %q from the database", second)
		}
	}
	a := &AfterState{}
	fillCounts(&a.counts, n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], n[8], n[9])
	orgs := map[string]string{}
	a.devices = make([]device, 0, a.counts.KeysExpected)
	for len(rest) > 0 {
		var line string
		line, rest, _ = strings.Cut(rest, "\n")
		line = strings.TrimRight(line, "\r")
		if line == "" {
			continue
		}
		org, quoted, ok := strings.Cut(line, " ")
		if !ok {
			return nil, fmt.Errorf("device preparation: unexpected device line %q from the database", line)
		}
		var name string
		if len(quoted) >= 2 && quoted[0] == '"' && quoted[len(quoted)-1] == '"' && !strings.ContainsAny(quoted[1:len(quoted)-1], `"\\`) {
			name = quoted[1 : len(quoted)-1] // nothing escaped
		} else if err := json.Unmarshal([]byte(quoted), &name); err != nil {
			return nil, fmt.Errorf("device preparation: unexpected device line %q from the database: %w", line, err)
		}
		if o, ok := orgs[org]; ok {
			org = o
		} else {
			orgs[org] = org
		}
		a.devices = append(a.devices, device{org: org, name: name})
	}
	if len(a.devices) != a.counts.KeysExpected {
		return nil, fmt.Errorf("device preparation: the database listed %d devices awaiting reconnect, its counts say %d", len(a.devices), a.counts.KeysExpected)
	}
	c.After = a
	return c, nil
}
