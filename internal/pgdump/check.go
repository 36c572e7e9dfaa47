package pgdump

import (
	"fmt"
	"regexp"
	"strings"
)

// Checker accepts what a single-database `pg_dump --clean --if-exists` of a Flight
// Control server writes and refuses anything else: roles, other databases, server
// settings, COPY to or from a program or a file, server-side file functions, session
// authorization changes, DO blocks, functions in languages other than SQL and PL/pgSQL,
// and every psql meta-command but \restrict and \unrestrict at the top and the bottom.
// Check is called on every item in order; the first refusal ends the dump.
type Checker struct {
	statements int
	data       int  // COPY blocks seen
	triggers   bool // a trigger exists: no more data may load
	eventTrig  bool // an event trigger exists: nothing but its own statements may follow
	metaSeen   int
}

// NewChecker returns a checker for one dump.
func NewChecker() *Checker { return &Checker{} }

// Statements is the number of statements accepted.
func (c *Checker) Statements() int { return c.statements }

const notPgDump = "a pg_dump --clean --if-exists of one Flight Control database never contains that"

// Check accepts or refuses one item. complete says whether the reader has seen the
// completion line before this item.
func (c *Checker) Check(it *Item, complete bool) error {
	switch it.Kind {
	case Gap:
		return nil
	case CopyData, CopyEnd:
		return nil // the reader checked the data's shape
	case Meta:
		return c.meta(it, complete)
	}
	if complete {
		return &Refusal{Line: it.Line, Found: "a statement after pg_dump's completion line: " + excerpt(it.Raw), Reason: "pg_dump writes nothing after it"}
	}
	n := Normalize(it.Raw)
	if err := c.statement(n, it); err != nil {
		return err
	}
	if err := denyScan(it); err != nil {
		return err
	}
	c.statements++
	return nil
}

var restrictRE = regexp.MustCompile(`^\\(restrict|unrestrict) [A-Za-z0-9]{1,128}\r?\n?$`)

func (c *Checker) meta(it *Item, complete bool) error {
	line := strings.TrimRight(string(it.Raw), "\r\n")
	m := restrictRE.FindStringSubmatch(string(it.Raw))
	if m == nil {
		return &Refusal{Line: it.Line, Found: "the psql meta-command " + metaWord([]byte(strings.TrimSpace(line))), Reason: notPgDump + " (pg_dump writes only \\restrict and \\unrestrict)"}
	}
	switch {
	case m[1] == "restrict" && c.statements == 0 && c.metaSeen == 0:
	case m[1] == "unrestrict" && complete:
	default:
		return &Refusal{Line: it.Line, Found: "\\" + m[1] + " here", Reason: "pg_dump writes \\restrict before its first statement and \\unrestrict after its completion line only"}
	}
	c.metaSeen++
	return nil
}

var setParams = map[string]bool{
	"statement_timeout": true, "lock_timeout": true, "idle_in_transaction_session_timeout": true,
	"transaction_timeout": true, "client_encoding": true, "standard_conforming_strings": true,
	"check_function_bodies": true, "xmloption": true, "client_min_messages": true, "row_security": true,
	"default_tablespace": true, "default_table_access_method": true, "default_with_oids": true,
}

var (
	setRE       = regexp.MustCompile(`^SET ([A-Z_]+) (=|TO) ('[^']*'|[A-Z0-9_]+|-?[0-9]+);$`)
	searchPath  = "SELECT PG_CATALOG.SET_CONFIG('search_path', '', FALSE);"
	setvalRE    = regexp.MustCompile(`^SELECT PG_CATALOG.SETVAL\('[^']+', [0-9]+, (TRUE|FALSE)\);$`)
	copyRE      = regexp.MustCompile(`^COPY ("[^"]+"|[A-Z_][A-Z0-9_$]*)\.("[^"]+"|[A-Z_][A-Z0-9_$]*) (\(("[^"]+"|[A-Z_][A-Z0-9_$]*)(, ?("[^"]+"|[A-Z_][A-Z0-9_$]*))*\) )?FROM STDIN;$`)
	languageRE  = regexp.MustCompile(` LANGUAGE ('?[A-Za-z0-9_]+'?)`)
	createAsRE  = regexp.MustCompile(`^(UNLOGGED )?(TABLE|MATERIALIZED VIEW) (IF NOT EXISTS )?("[^"]+"|[^ (]+)( \([^)]*\))? AS `)
	extensionRE = regexp.MustCompile(`^CREATE EXTENSION (IF NOT EXISTS )?("?[a-z0-9_-]+"?|[A-Z0-9_]+)( |;)`)
)

// Object kinds a Flight Control dump creates, alters, drops and comments on.
var objectKinds = []string{
	"TABLE", "UNLOGGED TABLE", "VIEW", "MATERIALIZED VIEW", "RECURSIVE VIEW", "SEQUENCE",
	"INDEX", "UNIQUE INDEX", "FUNCTION", "PROCEDURE", "AGGREGATE", "TYPE", "DOMAIN",
	"TRIGGER", "CONSTRAINT TRIGGER", "EVENT TRIGGER", "POLICY", "RULE", "STATISTICS",
	"COLLATION", "TEXT SEARCH", "SCHEMA", "EXTENSION", "CAST", "OPERATOR", "COLUMN", "CONSTRAINT",
}

// Extensions a Flight Control database may use.
var allowedExtensions = map[string]bool{
	"pg_trgm": true, "plpgsql": true, "btree_gin": true, "btree_gist": true, "pgcrypto": true,
	"uuid-ossp": true, "citext": true,
}

// Kinds that reach beyond the database being restored.
var forbiddenKinds = map[string]string{
	"DATABASE":     "another database",
	"ROLE":         "a role",
	"USER":         "a role",
	"GROUP":        "a role",
	"TABLESPACE":   "a tablespace",
	"SERVER":       "a foreign server",
	"FOREIGN":      "a foreign data wrapper or table",
	"SUBSCRIPTION": "a subscription",
	"PUBLICATION":  "a publication",
	"LANGUAGE":     "a procedural language",
	"ACCESS":       "an access method",
	"SYSTEM":       "server settings",
	"USER MAPPING": "a user mapping",
	"LARGE OBJECT": "a large object",
}

func kindAfter(rest string) (string, bool) {
	best := ""
	for _, k := range objectKinds {
		if (strings.HasPrefix(rest, k+" ") || strings.HasPrefix(rest, k+";")) && len(k) > len(best) {
			best = k
		}
	}
	return best, best != ""
}

func firstWord(s string) string {
	w, _, _ := strings.Cut(s, " ")
	return strings.TrimSuffix(w, ";")
}

func refuse(it *Item, found, reason string) error {
	return &Refusal{Line: it.Line, Found: found, Reason: reason}
}

func (c *Checker) statement(n string, it *Item) error {
	verb := firstWord(n)
	rest := strings.TrimPrefix(strings.TrimPrefix(n, verb), " ")
	if c.eventTrig && !(strings.HasPrefix(n, "ALTER EVENT TRIGGER ") || strings.HasPrefix(n, "COMMENT ON EVENT TRIGGER ") || strings.HasPrefix(n, "CREATE EVENT TRIGGER ")) {
		return refuse(it, excerpt([]byte(n))+" after an event trigger", "pg_dump writes event triggers last, so that none fires while the dump loads")
	}
	switch verb {
	case "SET":
		m := setRE.FindStringSubmatch(n)
		if strings.HasPrefix(n, "SET ROLE") || strings.HasPrefix(n, "SET SESSION") || strings.HasPrefix(n, "SET LOCAL") {
			return refuse(it, excerpt([]byte(n)), notPgDump+": it would change who runs the rest of the dump")
		}
		if m == nil || !setParams[strings.ToLower(m[1])] {
			return refuse(it, excerpt([]byte(n)), notPgDump+": pg_dump sets only its session defaults")
		}
		if strings.ToLower(m[1]) == "standard_conforming_strings" && m[3] != "ON" {
			return refuse(it, excerpt([]byte(n)), "pg_dump always writes standard_conforming_strings = on")
		}
		return nil
	case "SELECT":
		if n == searchPath || setvalRE.MatchString(n) {
			return nil
		}
		return refuse(it, excerpt([]byte(n)), notPgDump+": pg_dump's only SELECTs set the search path and sequence values")
	case "COPY":
		if !copyRE.MatchString(n) {
			return refuse(it, excerpt([]byte(n)), notPgDump+": pg_dump copies table data FROM stdin only, never to or from a program or a file")
		}
		if c.triggers {
			return refuse(it, excerpt([]byte(n))+" after a trigger", "pg_dump loads all data before it creates triggers")
		}
		c.data++
		return nil
	case "CREATE":
		rest = strings.TrimPrefix(rest, "OR REPLACE ")
		if strings.HasPrefix(rest, "EXTENSION ") {
			m := extensionRE.FindStringSubmatch(n)
			if m == nil || !allowedExtensions[strings.ToLower(strings.Trim(m[2], `"`))] {
				return refuse(it, excerpt([]byte(n)), "only the extensions a Flight Control database uses may be created ("+extensionList()+")")
			}
			return nil
		}
		k, ok := kindAfter(rest)
		if !ok || k == "COLUMN" || k == "CONSTRAINT" {
			return refuse(it, excerpt([]byte(n)), c.kindReason(rest))
		}
		if k == "FUNCTION" || k == "PROCEDURE" || k == "AGGREGATE" {
			for _, m := range languageRE.FindAllStringSubmatch(n, -1) {
				lang := strings.ToLower(strings.Trim(m[1], "'"))
				if lang != "plpgsql" && lang != "sql" {
					return refuse(it, excerpt([]byte(n)), "only SQL and PL/pgSQL functions are accepted, not LANGUAGE "+lang)
				}
			}
		}
		if (k == "TABLE" || k == "UNLOGGED TABLE" || k == "MATERIALIZED VIEW") && createAsRE.MatchString(rest) && !strings.HasSuffix(n, " WITH NO DATA;") {
			return refuse(it, excerpt([]byte(n)), notPgDump+": CREATE ... AS runs a query while the dump loads (pg_dump creates tables from column lists, views WITH NO DATA)")
		}
		if k == "TRIGGER" || k == "CONSTRAINT TRIGGER" {
			c.triggers = true
		}
		if k == "EVENT TRIGGER" {
			c.triggers, c.eventTrig = true, true
		}
		return nil
	case "ALTER":
		if strings.HasPrefix(rest, "DEFAULT PRIVILEGES ") {
			return grantShape(it, n, rest)
		}
		k, ok := kindAfter(rest)
		if !ok || k == "COLUMN" || k == "CONSTRAINT" || k == "EXTENSION" {
			return refuse(it, excerpt([]byte(n)), c.kindReason(rest))
		}
		return nil
	case "DROP":
		k, ok := kindAfter(rest)
		if !ok || k == "COLUMN" || k == "CONSTRAINT" {
			return refuse(it, excerpt([]byte(n)), c.kindReason(rest))
		}
		return nil
	case "COMMENT":
		on := strings.TrimPrefix(rest, "ON ")
		if k, ok := kindAfter(on); !ok || k == "CONSTRAINT TRIGGER" {
			return refuse(it, excerpt([]byte(n)), c.kindReason(on))
		}
		return nil
	case "GRANT", "REVOKE":
		return grantShape(it, n, rest)
	case "DO":
		return refuse(it, "a DO block: "+excerpt([]byte(n)), notPgDump+": it would run code while the dump loads")
	}
	return refuse(it, "a "+verb+" statement: "+excerpt([]byte(n)), notPgDump)
}

func (c *Checker) kindReason(rest string) string {
	w := firstWord(rest)
	two := w
	if r := strings.SplitN(rest, " ", 3); len(r) >= 2 {
		two = r[0] + " " + strings.TrimSuffix(r[1], ";")
	}
	if what, ok := forbiddenKinds[two]; ok && what != "" {
		return notPgDump + ": it would change " + what + " outside the database being restored"
	}
	if what, ok := forbiddenKinds[w]; ok {
		return notPgDump + ": it would change " + what + " outside the database being restored"
	}
	return notPgDump
}

var grantObjectRE = regexp.MustCompile(` ON (TABLE|SEQUENCE|FUNCTION|PROCEDURE|ROUTINE|SCHEMA|TYPE|DOMAIN|ALL TABLES IN SCHEMA|ALL SEQUENCES IN SCHEMA|ALL FUNCTIONS IN SCHEMA|TABLES|SEQUENCES|FUNCTIONS|ROUTINES|TYPES|SCHEMAS) `)

// grantShape accepts privileges on objects of this database, never role memberships or
// privileges on databases, tablespaces, parameters or servers.
func grantShape(it *Item, n, rest string) error {
	if !strings.Contains(n, " ON ") || !grantObjectRE.MatchString(n) {
		if on := strings.Index(n, " ON "); on >= 0 {
			return refuse(it, excerpt([]byte(n)), notPgDump+": pg_dump grants only on this database's tables, sequences, functions, types and schemas")
		}
		return refuse(it, "a role membership grant: "+excerpt([]byte(n)), notPgDump+": it would change a role outside the database being restored")
	}
	return nil
}

func extensionList() string {
	return "pg_trgm, plpgsql, btree_gin, btree_gist, pgcrypto, uuid-ossp, citext"
}

// denyRE finds, anywhere in a statement (function bodies and literals included), what
// no Flight Control dump holds and what could reach outside the database being restored
// when a function runs during the load.
var denyRE = regexp.MustCompile(`(?i)\b(pg_read_file|pg_read_binary_file|pg_ls_[a-z_]*dir|pg_stat_file|pg_file_[a-z_]+|lo_import|lo_export|dblink[a-z_]*|pg_execute_server_program|pg_terminate_backend|pg_cancel_backend|pg_signal_backend|pg_reload_conf|pg_promote|pg_rotate_logfile|set_config)\b|\b(to|from)\s+program\b|\bsession\s+authorization\b|\b(set|reset)\s+(local\s+|session\s+)?role\b|\balter\s+system\b|\b(create|alter|drop)\s+(role|user|group|database|tablespace|server|subscription|publication)\b|\bcopy\b[^;]*\b(to|from)\s+(e?'|stdout)|\blanguage\s+'?(c|internal|plpythonu?|plpython3u|plperlu|pltclu)'?\b`)

func denyScan(it *Item) error {
	raw := it.Raw
	// The preamble's set_config is the only one pg_dump writes.
	if Normalize(raw) == searchPath {
		return nil
	}
	if loc := denyRE.FindIndex(raw); loc != nil {
		found := string(raw[loc[0]:loc[1]])
		return refuse(it, fmt.Sprintf("%q in %s", found, excerpt(raw)), notPgDump+": it could reach outside the database being restored")
	}
	return nil
}
