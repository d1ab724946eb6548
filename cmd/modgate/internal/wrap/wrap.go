// Package wrap prints prose for a terminal: paragraphs after a label,
// wrapped with a hanging indent. `modgate explain` and `modgate doctor`
// both print this way.
package wrap

import (
	"fmt"
	"io"
	"strings"
)

// Width is where text wraps.
const Width = 100

// Paragraphs prints text after label, wrapped at Width with a hanging
// indent. Each line of text is a paragraph; one that starts with "- " is a
// list item and gets a further indent when it wraps. A `code span` is never
// cut across lines, so that a command can be copied whole.
func Paragraphs(w io.Writer, label, text string) {
	indent := strings.Repeat(" ", len(label))
	first := true
	for _, para := range strings.Split(text, "\n") {
		if para == "" {
			continue
		}
		prefix := indent
		if first {
			prefix = label
		}
		first = false
		cont := indent
		if strings.HasPrefix(para, "- ") {
			cont += "  "
		}
		line := prefix
		fresh := true
		for _, word := range words(para) {
			if !fresh && len(line)+1+len(word) > Width {
				fmt.Fprintln(w, line)
				line, fresh = cont, true
			}
			if !fresh {
				line += " "
			}
			line += word
			fresh = false
		}
		fmt.Fprintln(w, line)
	}
}

// words splits s like strings.Fields, but keeps a `code span` in one piece.
func words(s string) []string {
	var out []string
	var cur strings.Builder
	inCode := false
	for _, r := range s {
		switch {
		case r == '`':
			inCode = !inCode
			cur.WriteRune(r)
		case r == ' ' && !inCode:
			if cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
			}
		default:
			cur.WriteRune(r)
		}
	}
	if cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}
