package sidecar

import "testing"

func TestHedgeBudget(t *testing.T) {
	var b hedgeBudget // full: a quiet modgate may hedge at once
	spent := 0
	for b.spend() {
		spent++
	}
	if spent != hedgeBurst {
		t.Errorf("after a quiet spell, %d hedges in a burst; want %d", spent, hedgeBurst)
	}
	// Under sustained load: at most 10% of requests.
	spent = 0
	for range 1000 {
		b.earn()
		if b.spend() {
			spent++
		}
	}
	if spent > 100 {
		t.Errorf("%d hedges for 1000 requests; want at most 100", spent)
	}
}
