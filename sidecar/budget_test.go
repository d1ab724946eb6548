package sidecar

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// readWhole reserves from the budget exactly the buffer it holds: sized
// from the announced length when there is one, so that a small answer
// costs its own size and not a default buffer.
func TestReadWholeSizesFromTheAnnouncedLength(t *testing.T) {
	body := strings.Repeat("i", 300)
	for _, c := range []struct {
		name       string
		size       int64
		text       string
		limit      int64
		wantHeld   int64
		wantTooBig bool
	}{
		{"announced", 300, body, 256 << 10, 301, false},
		{"empty", 0, "", 256 << 10, 1, false},
		{"unknown length", -1, body, 256 << 10, 4 << 10, false},
		{"longer than announced", 100, body, 256 << 10, 404, false}, // grows by doubling: 101, 202, 404
		{"announced over the first buffer's cap", 2 << 20, body, 16 << 20, 4 << 10, false},
		{"limit below the announcement", 300, body, 200, 201, true},
		{"tile", 8192, strings.Repeat("t", 8192), 1 << 20, 8193, false},
	} {
		b := &budget{max: 1 << 30}
		// One byte per Read: the buffer cannot be filled past the end
		// by a reader that hands out more than asked.
		got, held, err := readWhole(iotest.OneByteReader(strings.NewReader(c.text)), c.size, c.limit, b)
		if c.wantTooBig {
			if !errors.Is(err, errTooLarge) {
				t.Errorf("%s: err %v, want errTooLarge", c.name, err)
			}
		} else if err != nil || string(got) != c.text {
			t.Errorf("%s: %d bytes, %v", c.name, len(got), err)
		}
		if held != c.wantHeld || b.used.Load() != held || int64(cap(got)) != held && got != nil {
			t.Errorf("%s: held %d, budget used %d, buffer cap %d; want %d held", c.name, held, b.used.Load(), cap(got), c.wantHeld)
		}
	}

	// A budget without room for the announced length refuses before a
	// byte is read.
	b := &budget{max: 200}
	r := &countingReader{r: strings.NewReader(body)}
	if _, held, err := readWhole(r, 300, 256<<10, b); !errors.Is(err, errOverBudget) || held != 0 || b.used.Load() != 0 || r.n != 0 {
		t.Errorf("over budget: held %d, used %d, read %d, %v", held, b.used.Load(), r.n, err)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
