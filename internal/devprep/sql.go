package devprep

// The SQL below gives the same rows as upstream's statements (UPSTREAM §4.2, §4.3). Plan
// and Run build their statements from the same predicates, so what Plan counts is what Run
// changes.

const (
	// AnnotationAwaitingReconnect is the annotation the server looks for.
	AnnotationAwaitingReconnect = "device-controller/awaitingReconnect"
	// SummaryInfo is the summary text the server itself uses for this state.
	SummaryInfo = "Device has not reconnected since restore to confirm its current state."
	// DefaultOrgID is where the SystemRestored event goes, as upstream puts it.
	DefaultOrgID = "00000000-0000-0000-0000-000000000000"
)

// requiredTables must exist for the database to count as a flightctl database.
var requiredTables = []string{"devices", "device_timestamps", "enrollment_requests", "events", "organizations"}

// asObject is col when it holds a JSON object, else {}. It covers SQL NULL (as upstream)
// and also JSON null and any other non-object value: upstream's jsonb || turns those into
// an array, which the server cannot read; an object with the merged keys is what the
// server would have written.
func asObject(col string) string {
	return "(CASE WHEN jsonb_typeof(" + col + ") = 'object' THEN " + col + " ELSE '{}'::jsonb END)"
}

// notObject is true when col holds a value that asObject replaces by {} although it is not
// SQL NULL (JSON null, an array, a scalar).
func notObject(col string) string {
	return "(" + col + " IS NOT NULL AND jsonb_typeof(" + col + ") <> 'object')"
}

const (
	// Never NULL, so that NOT works on it.
	devAnnotated    = `((d.annotations ->> 'device-controller/awaitingReconnect') IS NOT DISTINCT FROM 'true')`
	devDecommission = `(COALESCE(d.status -> 'lifecycle' ->> 'status', '') IN ('Decommissioned', 'Decommissioning'))`
	devQualifies    = `(d.deleted_at IS NULL AND NOT ` + devDecommission + ` AND NOT ` + devAnnotated + `)`

	erAnnotated = `((e.annotations ->> 'device-controller/awaitingReconnect') IS NOT DISTINCT FROM 'true')`
	// A JSON boolean true and the string "true" both read as 'true' through ->>.
	erApproved   = `((e.status -> 'approval' ->> 'approved') IS NOT DISTINCT FROM 'true')`
	erQualifies  = `(e.deleted_at IS NULL AND NOT ` + erApproved + ` AND NOT ` + erAnnotated + `)`
	awaitingJSON = `'{"device-controller/awaitingReconnect": "true"}'::jsonb`
)

// Devices whose keys must exist once the run is over: every non-deleted device that
// carries the annotation, or will carry it after the update.
var keyedDevicesSQL = `SELECT d.org_id::text, d.name FROM devices AS d
WHERE d.deleted_at IS NULL AND (` + devAnnotated + ` OR ` + devQualifies + `)`

var deviceCountsSQL = `SELECT
	count(*) FILTER (WHERE ` + devQualifies + `),
	count(*) FILTER (WHERE d.deleted_at IS NULL AND ` + devAnnotated + `),
	count(*) FILTER (WHERE d.deleted_at IS NULL AND NOT ` + devAnnotated + ` AND ` + devDecommission + `),
	count(*) FILTER (WHERE d.deleted_at IS NOT NULL),
	count(*) FILTER (WHERE ` + devQualifies + ` AND (` + notObject("d.status") + ` OR ` + notObject("d.annotations") + `))
FROM devices AS d`

var erCountsSQL = `SELECT
	count(*) FILTER (WHERE ` + erQualifies + `),
	count(*) FILTER (WHERE e.deleted_at IS NULL AND ` + erAnnotated + `),
	count(*) FILTER (WHERE e.deleted_at IS NULL AND NOT ` + erAnnotated + ` AND ` + erApproved + `),
	count(*) FILTER (WHERE ` + erQualifies + ` AND ` + notObject("e.annotations") + `)
FROM enrollment_requests AS e`

const organizationsCountSQL = `SELECT count(*) FROM organizations`

// updateDevicesSQL updates the qualifying devices and, in the same statement, clears
// last_seen for exactly those devices.
var updateDevicesSQL = updateDevicesWhere(devQualifies)

// updateDevicesWhere is updateDevicesSQL for the qualifying devices that where selects.
func updateDevicesWhere(where string) string {
	return `WITH ` + updateDevicesCTEWhere(where) + `
SELECT (SELECT count(*) FROM updated), (SELECT count(*) FROM cleared)`
}

// updateDevicesCTE is the device update as the CTEs "updated" and "cleared", shared by
// Run's transaction and DatabaseUpdateScript.
var updateDevicesCTE = updateDevicesCTEWhere(devQualifies)

// updateDevicesCTEWhere is updateDevicesCTE for the qualifying devices that where selects.
func updateDevicesCTEWhere(where string) string {
	return `updated AS (
	UPDATE devices AS d SET
		annotations = ` + asObject("d.annotations") + ` || ` + awaitingJSON + `,
		status = ` + asObject("d.status") + ` || jsonb_build_object(
			'summary', jsonb_build_object('status', 'AwaitingReconnect', 'info', '` + SummaryInfo + `'),
			'updated', jsonb_build_object('status', 'Unknown')),
		resource_version = COALESCE(d.resource_version, 0) + 1
	WHERE ` + where + `
	RETURNING d.org_id, d.name
), cleared AS (
	UPDATE device_timestamps AS t SET last_seen = NULL
	FROM updated AS u
	WHERE t.org_id = u.org_id AND t.name = u.name
	RETURNING 1
)`
}

// updateDeviceRangeSQL is updateDevicesSQL for the devices from ($1, $2) (inclusive) up
// to ($3, $4) (exclusive) in the order of (org_id, name); a NULL org_id leaves that end
// open. The key does not change in the update, so a row another session changes at the
// same time is still in the same range when the update reads it again.
var updateDeviceRangeSQL = updateDevicesWhere(`($1::uuid IS NULL OR (d.org_id, d.name) >= ($1::uuid, $2::text))
		AND ($3::uuid IS NULL OR (d.org_id, d.name) < ($3::uuid, $4::text))
		AND ` + devQualifies)

// deviceKeyAtSQL is the (org_id, name) of the device at offset $1 in key order.
const deviceKeyAtSQL = `SELECT org_id::text, name FROM devices ORDER BY org_id, name OFFSET $1 LIMIT 1`

var updateEnrollmentRequestsSQL = `UPDATE enrollment_requests AS e SET
	annotations = ` + asObject("e.annotations") + ` || ` + awaitingJSON + `,
	resource_version = COALESCE(e.resource_version, 0) + 1
WHERE ` + erQualifies

// insertEventColumns and insertEventValues are insertEventSQL's parts, shared by
// EventScript.
const (
	insertEventColumns = `INSERT INTO events (org_id, name, reason, source_component, actor, type, message, details,
	involved_object_name, involved_object_kind, annotations, created_at, updated_at)`
	insertEventFixed = `'SystemRestored', '', '', 'Normal'`
	insertEventTail  = `'null'::jsonb, 'database', 'System', '{}'::jsonb, now(), now()`
)

// insertEventSQL writes the SystemRestored event as upstream does, once per name.
const insertEventSQL = insertEventColumns + `
VALUES ($1, $2, ` + insertEventFixed + `, $3, ` + insertEventTail + `)
ON CONFLICT (org_id, name) DO NOTHING`

const eventExistsSQL = `SELECT EXISTS (SELECT 1 FROM events WHERE org_id = $1 AND name = $2)`

const defaultOrgExistsSQL = `SELECT EXISTS (SELECT 1 FROM organizations WHERE id = $1)`

const missingTablesSQL = `SELECT t FROM unnest($1::text[]) AS t WHERE to_regclass('public.' || quote_ident(t)) IS NULL ORDER BY t`
