package sidecar

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/modgate/modgate/sidecar/wire"
)

// Small answers are read whole before they are relayed (to be checked,
// filtered or explained when they break off). Each kind has a limit, and
// every byte held that way across all requests comes out of one budget:
// past it a request is refused with 503, so that a flood of huge answers
// cannot grow modgate's memory.

// DefaultBufferBudget is Config.BufferBudget when it is zero.
const DefaultBufferBudget = 128 << 20

// errOverBudget is a read that would have taken modgate past its budget.
var errOverBudget = errors.New("over the buffer budget")

// budget counts the bytes held by whole-read answers.
type budget struct {
	max  int64
	used atomic.Int64
}

// take reserves n bytes, or reports that the budget has no room.
func (b *budget) take(n int64) bool {
	if b.used.Add(n) > b.max {
		b.used.Add(-n)
		return false
	}
	return true
}

func (b *budget) give(n int64) { b.used.Add(-n) }

// readWhole reads r to its end, at most limit bytes (more is an error
// wrapping errTooLarge), growing its buffer only as the answer does and
// reserving each growth from b. size is the length the answer announced
// (its Content-Length), or -1: a first buffer of size+1 bytes (the one
// more sees the end without growing) holds an answer of that length, so a
// 300-byte .info costs 301 bytes instead of 4 KiB, and a tile one buffer
// instead of three. An announcement counts up to firstMax only, past
// which the buffer grows with the bytes that come: an upstream that
// announces large answers and sends them slowly reserves at most firstMax
// of the budget per answer before its bytes arrive.
// held is what it reserved: the caller gives it back once the bytes are
// no longer needed, also on error.
func readWhole(r io.Reader, size, limit int64, b *budget) (body []byte, held int64, err error) {
	const (
		first    = 4 << 10 // when the length is unknown
		firstMax = 1 << 20
	)
	n := int64(first)
	if size >= 0 && size < firstMax {
		n = size + 1
	}
	buf := make([]byte, 0, min(n, limit+1))
	if !b.take(int64(cap(buf))) {
		return nil, 0, errOverBudget
	}
	held = int64(cap(buf))
	for {
		if len(buf) == cap(buf) {
			if int64(len(buf)) > limit {
				return buf, held, fmt.Errorf("%w: more than %d bytes", errTooLarge, limit)
			}
			grown := min(2*int64(cap(buf)), limit+1)
			if !b.take(grown - int64(cap(buf))) {
				return buf, held, errOverBudget
			}
			held += grown - int64(cap(buf))
			next := make([]byte, len(buf), grown)
			copy(next, buf)
			buf = next
		}
		n, rerr := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if rerr == io.EOF {
			if int64(len(buf)) > limit {
				return buf, held, fmt.Errorf("%w: more than %d bytes", errTooLarge, limit)
			}
			return buf, held, nil
		}
		if rerr != nil {
			return buf, held, rerr
		}
	}
}

// overBudget is the 503 of a request that found the budget spent.
func (x *exchange) overBudget() *problem {
	return fail(wire.Busy, fmt.Sprintf("%s: modgate holds %d MiB of other answers, its limit; try again", describeRequest(x.req), x.s.buffers.max>>20)).retryAfter(1)
}
