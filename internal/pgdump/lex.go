package pgdump

import (
	"bytes"
	"fmt"
	"strings"
)

type lexState int

const (
	stNormal lexState = iota
	stSingle          // '...' (standard_conforming_strings on: no backslash escapes)
	stEscape          // E'...'
	stDouble          // "..."
	stDollar          // $tag$...$tag$
	stLineComment
	stBlockComment
)

// lexer finds statement ends the way psql's lexer does, and refuses what psql would
// treat as a meta-command or a variable inside a statement.
type lexer struct {
	state    lexState
	depth    int // block comment nesting
	parens   int
	tag      []byte
	identLen int // length of the identifier being read in stNormal, 0 outside one
	skip     bool
}

type lexError struct{ found, reason string }

func (l *lexer) idle() bool { return l.state == stNormal && l.parens == 0 }

func isIdentStart(c byte) bool {
	return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80
}

func isIdentCont(c byte) bool { return isIdentStart(c) || (c >= '0' && c <= '9') || c == '$' }

// scan lexes buf[off:]; buf[:off] was lexed before. It returns the index just past the
// semicolon that ends the statement, or -1.
func (l *lexer) scan(buf []byte, off int) (int, *lexError) {
	for i := off; i < len(buf); i++ {
		c := buf[i]
		if l.skip {
			l.skip = false
			continue
		}
		switch l.state {
		case stLineComment:
			if c == '\n' {
				l.state = stNormal
			}
			continue
		case stBlockComment:
			if c == '*' && i+1 < len(buf) && buf[i+1] == '/' {
				l.depth--
				i++
				if l.depth == 0 {
					l.state = stNormal
				}
			} else if c == '/' && i+1 < len(buf) && buf[i+1] == '*' {
				l.depth++
				i++
			}
			continue
		case stSingle:
			if c == '\'' {
				l.state = stNormal
			}
			continue
		case stEscape:
			if c == '\\' {
				l.skip = true
			} else if c == '\'' {
				l.state = stNormal
			}
			continue
		case stDouble:
			if c == '"' {
				l.state = stNormal
			}
			continue
		case stDollar:
			if c == '$' && bytes.HasPrefix(buf[i+1:], l.tag[1:]) {
				i += len(l.tag) - 1
				l.state = stNormal
			}
			continue
		}
		// stNormal
		prevIdent := l.identLen
		if isIdentCont(c) && (l.identLen > 0 || isIdentStart(c)) {
			l.identLen++
		} else {
			l.identLen = 0
		}
		switch c {
		case '\'':
			if prevIdent == 1 && (buf[i-1] == 'E' || buf[i-1] == 'e') {
				l.state = stEscape
			} else {
				l.state = stSingle
			}
		case '"':
			l.state = stDouble
		case '$':
			if prevIdent > 0 {
				break // part of an identifier
			}
			if t := dollarTag(buf[i:]); t != nil {
				l.tag = append(l.tag[:0], t...)
				l.state = stDollar
				i += len(t) - 1
				l.identLen = 0
			}
		case '-':
			if i+1 < len(buf) && buf[i+1] == '-' {
				l.state = stLineComment
				i++
			}
		case '/':
			if i+1 < len(buf) && buf[i+1] == '*' {
				l.state = stBlockComment
				l.depth = 1
				i++
			}
		case '(':
			l.parens++
		case ')':
			if l.parens > 0 {
				l.parens--
			}
		case ';':
			if l.parens == 0 {
				return i + 1, nil
			}
		case '\\':
			word := metaWord(buf[i:])
			return -1, &lexError{found: fmt.Sprintf("the psql meta-command %s inside a statement", word),
				reason: "pg_dump writes no meta-command there; psql would run it"}
		case ':':
			if i+1 < len(buf) {
				n := buf[i+1]
				if n == ':' {
					i++
					l.identLen = 0
					break
				}
				if i > 0 && buf[i-1] == ':' {
					break
				}
				if isIdentStart(n) || n == '\'' || n == '"' || n == '{' {
					return -1, &lexError{found: fmt.Sprintf("the psql variable reference %q", excerpt(buf[i:min(len(buf), i+32)])),
						reason: "pg_dump writes no psql variables; psql would substitute it"}
				}
			}
		}
	}
	return -1, nil
}

// dollarTag returns the opening "$tag$" at the start of b, or nil.
func dollarTag(b []byte) []byte {
	if len(b) < 2 {
		return nil
	}
	if b[1] == '$' {
		return b[:2]
	}
	if !isIdentStart(b[1]) {
		return nil
	}
	for j := 2; j < len(b); j++ {
		if b[j] == '$' {
			return b[:j+1]
		}
		if !isIdentCont(b[j]) || b[j] == '$' {
			return nil
		}
	}
	return nil
}

func metaWord(b []byte) string {
	end := len(b)
	for j := 1; j < len(b); j++ {
		if b[j] == ' ' || b[j] == '\t' || b[j] == '\n' || b[j] == '\r' {
			end = j
			break
		}
	}
	if end > 24 {
		end = 24
	}
	return string(b[:end])
}

// Normalize returns stmt as one line: comments removed, runs of whitespace made one
// space, everything outside quotes upper-cased; string literals, quoted identifiers and
// dollar-quoted bodies are kept as written.
func Normalize(stmt []byte) string {
	var b strings.Builder
	b.Grow(len(stmt))
	st := stNormal
	depth := 0
	var tag []byte
	space := false
	identLen := 0
	put := func(c byte) {
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteByte(c)
	}
	for i := 0; i < len(stmt); i++ {
		c := stmt[i]
		switch st {
		case stLineComment:
			if c == '\n' {
				st = stNormal
				space = true
			}
			continue
		case stBlockComment:
			if c == '*' && i+1 < len(stmt) && stmt[i+1] == '/' {
				depth--
				i++
				if depth == 0 {
					st = stNormal
					space = true
				}
			} else if c == '/' && i+1 < len(stmt) && stmt[i+1] == '*' {
				depth++
				i++
			}
			continue
		case stSingle, stDouble:
			b.WriteByte(c)
			if (st == stSingle && c == '\'') || (st == stDouble && c == '"') {
				st = stNormal
			}
			continue
		case stEscape:
			b.WriteByte(c)
			if c == '\\' && i+1 < len(stmt) {
				i++
				b.WriteByte(stmt[i])
			} else if c == '\'' {
				st = stNormal
			}
			continue
		case stDollar:
			if c == '$' && bytes.HasPrefix(stmt[i+1:], tag[1:]) {
				b.Write(tag)
				i += len(tag) - 1
				st = stNormal
				continue
			}
			b.WriteByte(c)
			continue
		}
		prevIdent := identLen
		if isIdentCont(c) && (identLen > 0 || isIdentStart(c)) {
			identLen++
		} else {
			identLen = 0
		}
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			space = true
		case c == '-' && i+1 < len(stmt) && stmt[i+1] == '-':
			st = stLineComment
			i++
		case c == '/' && i+1 < len(stmt) && stmt[i+1] == '*':
			st = stBlockComment
			depth = 1
			i++
		case c == '\'':
			if prevIdent == 1 && (stmt[i-1] == 'E' || stmt[i-1] == 'e') {
				st = stEscape
			} else {
				st = stSingle
			}
			put(c)
		case c == '"':
			st = stDouble
			put(c)
		case c == '$' && prevIdent == 0 && dollarTag(stmt[i:]) != nil:
			tag = append(tag[:0], dollarTag(stmt[i:])...)
			st = stDollar
			if space && b.Len() > 0 {
				b.WriteByte(' ')
			}
			space = false
			b.Write(tag)
			i += len(tag) - 1
			identLen = 0
		default:
			if c >= 'a' && c <= 'z' {
				c -= 'a' - 'A'
			}
			put(c)
		}
	}
	return b.String()
}
