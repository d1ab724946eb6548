package wire

import "strings"

// ChainEntry is one upstream of a chain as GOPROXY syntax writes it.
type ChainEntry struct {
	Name string
	// OnError: the chain moves past this entry after any failure ("|"),
	// not only after 404 and 410 (",").
	OnError bool
}

// FormatChain writes a chain in GOPROXY syntax: "a,b|c,direct".
func FormatChain(entries []ChainEntry) string {
	var b strings.Builder
	for i, e := range entries {
		if i > 0 {
			if entries[i-1].OnError {
				b.WriteByte('|')
			} else {
				b.WriteByte(',')
			}
		}
		b.WriteString(e.Name)
	}
	return b.String()
}
