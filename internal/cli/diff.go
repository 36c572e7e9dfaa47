package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"flightctl.dr/internal/ansiblemod"
)

// PrintDiff prints the result's diff (--diff) as a unified diff of before against after,
// as ansible-playbook --diff shows it: every line once, changed lines marked. Nothing is
// printed when the result has no diff.
func PrintDiff(w io.Writer, out ansiblemod.Output) {
	d, ok := out["diff"].(map[string]any)
	if !ok {
		return
	}
	before, after := diffText(d["before"]), diffText(d["after"])
	if before == after {
		fmt.Fprintln(w, "diff: no change")
		return
	}
	fmt.Fprint(w, UnifiedDiff("before", "after", before, after, 3))
}

// diffText renders one side of a diff: text as it is, anything else as indented JSON.
func diffText(v any) string {
	switch x := v.(type) {
	case nil:
		return ""
	case string:
		return x
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b) + "\n"
}

// UnifiedDiff returns the unified diff (diff -u) of a against b with n lines of context,
// or "" when they are equal.
func UnifiedDiff(nameA, nameB, a, b string, n int) string {
	if a == b {
		return ""
	}
	la, lb := splitLines(a), splitLines(b)
	ops := diffLines(la, lb)
	var sb strings.Builder
	fmt.Fprintf(&sb, "--- %s\n+++ %s\n", nameA, nameB)
	// Group the edit script into hunks with n lines of context around changes.
	for i := 0; i < len(ops); {
		if ops[i].kind == ' ' {
			i++
			continue
		}
		start := i - n
		if start < 0 {
			start = 0
		}
		end := i
		for end < len(ops) {
			if ops[end].kind != ' ' {
				end++
				continue
			}
			// a run of equal lines: does another change follow within 2n lines?
			run := end
			for run < len(ops) && ops[run].kind == ' ' {
				run++
			}
			if run == len(ops) || run-end > 2*n {
				end += min(n, run-end)
				break
			}
			end = run
		}
		writeHunk(&sb, ops[start:end])
		i = end
	}
	return sb.String()
}

type diffOp struct {
	kind   byte // ' ', '-', '+'
	text   string
	ai, bi int // line numbers (from 1) in a and b before this op
}

func writeHunk(sb *strings.Builder, ops []diffOp) {
	var na, nb int
	for _, op := range ops {
		if op.kind != '+' {
			na++
		}
		if op.kind != '-' {
			nb++
		}
	}
	startA, startB := ops[0].ai, ops[0].bi
	if na == 0 {
		startA--
	}
	if nb == 0 {
		startB--
	}
	fmt.Fprintf(sb, "@@ -%s +%s @@\n", hunkRange(startA, na), hunkRange(startB, nb))
	for _, op := range ops {
		sb.WriteByte(op.kind)
		sb.WriteString(op.text)
		if !strings.HasSuffix(op.text, "\n") {
			sb.WriteString("\n\\ No newline at end of file\n")
		}
	}
}

func hunkRange(start, n int) string {
	if n == 1 {
		return fmt.Sprint(start)
	}
	return fmt.Sprintf("%d,%d", start, n)
}

func splitLines(s string) []string {
	if s == "" {
		return nil
	}
	lines := strings.SplitAfter(s, "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// maxDiffCells bounds the longest-common-subsequence table; beyond it the diff is the
// whole of a removed and the whole of b added (still correct, only less precise).
const maxDiffCells = 4 << 20

// diffLines is a longest-common-subsequence edit script of a into b.
func diffLines(a, b []string) []diffOp {
	// Common prefix and suffix first: diffs of configuration files are mostly those.
	pre := 0
	for pre < len(a) && pre < len(b) && a[pre] == b[pre] {
		pre++
	}
	suf := 0
	for suf < len(a)-pre && suf < len(b)-pre && a[len(a)-1-suf] == b[len(b)-1-suf] {
		suf++
	}
	ma, mb := a[pre:len(a)-suf], b[pre:len(b)-suf]
	var mid []diffOp
	if (len(ma)+1)*(len(mb)+1) > maxDiffCells {
		for _, l := range ma {
			mid = append(mid, diffOp{kind: '-', text: l})
		}
		for _, l := range mb {
			mid = append(mid, diffOp{kind: '+', text: l})
		}
	} else {
		// lcs[i][j]: length of the LCS of ma[i:] and mb[j:].
		w := len(mb) + 1
		lcs := make([]int, (len(ma)+1)*w)
		for i := len(ma) - 1; i >= 0; i-- {
			for j := len(mb) - 1; j >= 0; j-- {
				if ma[i] == mb[j] {
					lcs[i*w+j] = lcs[(i+1)*w+j+1] + 1
				} else {
					lcs[i*w+j] = max(lcs[(i+1)*w+j], lcs[i*w+j+1])
				}
			}
		}
		i, j := 0, 0
		for i < len(ma) || j < len(mb) {
			switch {
			case i < len(ma) && j < len(mb) && ma[i] == mb[j]:
				mid = append(mid, diffOp{kind: ' ', text: ma[i]})
				i++
				j++
			case i < len(ma) && (j == len(mb) || lcs[(i+1)*w+j] >= lcs[i*w+j+1]):
				mid = append(mid, diffOp{kind: '-', text: ma[i]})
				i++
			default:
				mid = append(mid, diffOp{kind: '+', text: mb[j]})
				j++
			}
		}
	}
	ops := make([]diffOp, 0, pre+len(mid)+suf)
	for _, l := range a[:pre] {
		ops = append(ops, diffOp{kind: ' ', text: l})
	}
	ops = append(ops, mid...)
	for _, l := range a[len(a)-suf:] {
		ops = append(ops, diffOp{kind: ' ', text: l})
	}
	// Line numbers before each op.
	ai, bi := 1, 1
	for k := range ops {
		ops[k].ai, ops[k].bi = ai, bi
		if ops[k].kind != '+' {
			ai++
		}
		if ops[k].kind != '-' {
			bi++
		}
	}
	return ops
}
