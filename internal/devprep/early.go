package devprep

import (
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
}

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
	// Not ON CONFLICT: before the indexes are built there is no unique index to name.
	org, name := literal(DefaultOrgID)+"::uuid", literal(eventName(restoreID))
	return `WITH ` + updateDevicesCTE + `, ers AS (
` + updateEnrollmentRequestsSQL + `
	RETURNING 1
), ev AS (
` + insertEventColumns + `
	SELECT ` + org + `, ` + name + `, ` + insertEventFixed + `,
		` + literal(prefix) + ` || (SELECT count(*) FROM updated) || ` + literal(suffix) + `, ` + insertEventTail + `
	WHERE NOT EXISTS (SELECT 1 FROM events WHERE org_id = ` + org + ` AND name = ` + name + `)
	RETURNING 1
)
SELECT (SELECT count(*) FROM updated) || '|' || (SELECT count(*) FROM cleared) || '|' || (SELECT count(*) FROM ers) || '|' || (SELECT count(*) FROM ev)
	|| '|' || ((SELECT count(*) FROM devices AS d WHERE ` + devQualifies + ` AND (` + notObject("d.status") + ` OR ` + notObject("d.annotations") + `))
		+ (SELECT count(*) FROM enrollment_requests AS e WHERE ` + erQualifies + ` AND ` + notObject("e.annotations") + `));
`
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
