package explain

import (
	"bufio"
	"fmt"
	"io"

	"github.com/modgate/modgate/cmd/modgate/internal/wrap"
)

// Write prints explanations for a person: a numbered list, each with what
// was seen, the cause and the fix, wrapped to fit a terminal. The lines
// seen are printed as they were.
func Write(w io.Writer, es []Explanation) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	n := len(es)
	noun := "problems"
	if n == 1 {
		noun = "problem"
	}
	fmt.Fprintf(bw, "modgate explain: %d %s\n", n, noun)
	for i, e := range es {
		fmt.Fprintf(bw, "\n%d. %s\n", i+1, e.Title)
		for j, s := range e.Saw {
			label := "   saw:   "
			if j > 0 {
				label = "          "
			}
			fmt.Fprintf(bw, "%s%s\n", label, s)
		}
		if e.More > 0 {
			like := "failures"
			if e.More == 1 {
				like = "failure"
			}
			fmt.Fprintf(bw, "          (and %d more %s like it)\n", e.More, like)
		}
		wrap.Paragraphs(bw, "   cause: ", e.Cause)
		wrap.Paragraphs(bw, "   fix:   ", e.Fix)
	}
}
