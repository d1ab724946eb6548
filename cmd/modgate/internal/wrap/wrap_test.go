package wrap

import (
	"strings"
	"testing"
)

func TestParagraphs(t *testing.T) {
	var b strings.Builder
	long := strings.Repeat("word ", 25)
	// Sixteen words end at column 89, where the code span would be cut.
	Paragraphs(&b, "   fix:   ", strings.Repeat("word ", 16)+"`go env -w GOPROXY=http://127.0.0.1:7070` end\n- "+long+"\n\n")
	lines := strings.Split(strings.TrimSuffix(b.String(), "\n"), "\n")
	if !strings.HasPrefix(lines[0], "   fix:   word") {
		t.Errorf("first line %q does not start with the label", lines[0])
	}
	sawCode, sawItem := false, false
	for i, l := range lines {
		if len(l) > Width && !strings.Contains(l, "`") {
			t.Errorf("line %d is %d wide: %q", i, len(l), l)
		}
		if i > 0 && !strings.HasPrefix(l, "          ") {
			t.Errorf("line %d has no hanging indent: %q", i, l)
		}
		if strings.Contains(l, "`go env -w GOPROXY=http://127.0.0.1:7070`") {
			sawCode = true
		}
		if strings.HasPrefix(l, "          - word") {
			sawItem = true
		} else if sawItem && !strings.HasPrefix(l, "            word") {
			t.Errorf("list item continues without its indent: %q", l)
		}
	}
	if !sawCode {
		t.Errorf("the code span was cut:\n%s", b.String())
	}
	if !sawItem {
		t.Errorf("no list item:\n%s", b.String())
	}
}
