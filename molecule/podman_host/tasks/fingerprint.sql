SELECT json_build_object(
  'devices', (SELECT coalesce(json_agg(name ORDER BY name), '[]') FROM devices WHERE deleted_at IS NULL),
  'by_status', (SELECT coalesce(json_object_agg(s, n), '{}') FROM (
      SELECT coalesce(status->'summary'->>'status', 'Unknown') AS s, count(*) AS n
      FROM devices WHERE deleted_at IS NULL GROUP BY 1) AS x),
  'fleets', (SELECT count(*) FROM fleets),
  'enrollment_requests', (SELECT count(*) FROM enrollment_requests),
  'organizations', (SELECT count(*) FROM organizations),
  'restored_events', (SELECT count(*) FROM events WHERE reason = 'SystemRestored'),
  'awaiting_keys', (SELECT coalesce(json_agg('v1/' || lower(org_id::text) || '/device/' || name || '/awaiting-reconnect' ORDER BY org_id, name), '[]')
      FROM devices WHERE deleted_at IS NULL AND annotations->>'device-controller/awaitingReconnect' = 'true'),
  'prepared_devices', (SELECT count(*) FROM devices
      WHERE deleted_at IS NULL
        AND coalesce(status->'lifecycle'->>'status', '') NOT IN ('Decommissioned', 'Decommissioning')),
  'databases', (SELECT json_agg(datname ORDER BY datname) FROM pg_database WHERE NOT datistemplate)
)
