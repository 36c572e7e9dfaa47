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
	// After is what the prepared database held right after DatabaseScript, read in the
	// same session (PreparedScript): the counts Run reports and the devices whose keys it
	// writes. With it Run reads no row in the downtime; without it (a restore resumed in
	// another process: it is never journaled) Run reads them from the database.
	After *AfterState `json:"-"`
}

// AfterState is the prepared database as PreparedScript saw it.
type AfterState struct {
	// counts is what readCounts gives on the prepared database.
	counts Counts
	// devices are those whose awaiting-reconnect key must exist (keyedDevicesSQL), in
	// the database's order.
	devices []device
}

// Keys is the number of awaiting-reconnect keys the prepared database needs.
func (a *AfterState) Keys() int { return len(a.devices) }

// DatabaseScript is the database part of device preparation (SPEC §5 steps 2, 3 and 5:
// devices, device_timestamps, enrollment requests, the SystemRestored event named after
// restoreID) as one SQL statement, so one transaction, with the rows and values Run's
// transaction gives. A restore runs it on its temporary database as the admin user,
// between the load of the data and the build of the indexes, while the server still runs
// on the live database: no index is maintained by the update, and only the KV part
// (Options.Prepared) is left for when the units are stopped. It prints one line,
// "devices|timestamps|enrollment requests|events|JSON repaired" (ParseDatabaseCounts).
func DatabaseScript(restoreID string) string {
	msg := EventMessage(123456789)
	prefix, suffix, _ := strings.Cut(msg, "123456789")
	return databaseScript(`, ev AS (
`+eventInsert(restoreID, literal(prefix)+` || (SELECT count(*) FROM updated) || `+literal(suffix))+`
	RETURNING 1
)`, "(SELECT count(*) FROM ev)")
}

// PreparedTables are the tables DatabaseUpdateScript writes, as pg_dump names them.
var PreparedTables = []string{"public.devices", "public.device_timestamps", "public.enrollment_requests"}

// DatabaseUpdateScript is DatabaseScript without the event, so that it writes only
// PreparedTables: a restore runs it beside the index builds of the other tables (events,
// the largest, among them), then EventScript once every index exists. Its line has 0 in
// the events field.
func DatabaseUpdateScript() string {
	return databaseScript("", "0")
}

// EventScript records the SystemRestored event named after restoreID, with the number of
// devices DatabaseUpdateScript updated, unless it exists; it prints 1 when it recorded
// it, else 0.
func EventScript(restoreID string, devicesUpdated int) string {
	return `WITH ev AS (
` + eventInsert(restoreID, literal(EventMessage(devicesUpdated))) + `
	RETURNING 1
)
SELECT count(*) FROM ev;
`
}

// databaseScript is the one statement of DatabaseScript and DatabaseUpdateScript: the
// device, timestamp and enrollment request updates, then the event CTE given (if any),
// printing the counts with events as given.
func databaseScript(eventCTE, events string) string {
	return `WITH ` + updateDevicesCTE + `, ers AS (
` + updateEnrollmentRequestsSQL + `
	RETURNING 1
)` + eventCTE + `
SELECT (SELECT count(*) FROM updated) || '|' || (SELECT count(*) FROM cleared) || '|' || (SELECT count(*) FROM ers) || '|' || ` + events + `
	|| '|' || ((SELECT count(*) FROM devices AS d WHERE ` + devQualifies + ` AND (` + notObject("d.status") + ` OR ` + notObject("d.annotations") + `))
		+ (SELECT count(*) FROM enrollment_requests AS e WHERE ` + erQualifies + ` AND ` + notObject("e.annotations") + `));
`
}

// eventInsert inserts the SystemRestored event named after restoreID with the message
// SQL expression given, unless it exists. Not ON CONFLICT: before the indexes are built
// there is no unique index to name.
func eventInsert(restoreID, message string) string {
	org, name := literal(DefaultOrgID)+"::uuid", literal(eventName(restoreID))
	return insertEventColumns + `
	SELECT ` + org + `, ` + name + `, ` + insertEventFixed + `,
		` + message + `, ` + insertEventTail + `
	WHERE NOT EXISTS (SELECT 1 FROM events WHERE org_id = ` + org + ` AND name = ` + name + `)`
}

func literal(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// ParseDatabaseCounts reads DatabaseScript's output line.
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

// PreparedScript is DatabaseScript followed, in the same session, by what the KV part of
// device preparation needs from the prepared database: the counts Run reports, then one
// line per device whose key must exist ("<org id> <name as a JSON string>"). A restore
// runs it on its temporary database before anything is stopped; ParsePrepared reads its
// output, and Run with those counts as Options.Prepared reads no row.
func PreparedScript(restoreID string) string {
	return DatabaseScript(restoreID) + PreparedReadsScript()
}

// PreparedReadsScript is what PreparedScript reads after DatabaseScript (or
// DatabaseUpdateScript and EventScript): the counts and the devices whose keys the KV
// part writes, as the lines after the first that ParsePrepared reads. It changes nothing.
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

// ParsePrepared reads PreparedScript's output: DatabaseScript's counts, with After.
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
