package doctor

import (
	"context"
	"fmt"
	"time"
)

// probeFleet checks that modgate can use what its fleet shares. A part
// that fails is a warning, not an error: modgate serves without it, each
// replica fetching from upstreams on its own.
func (d *run) probeFleet(ctx context.Context, timeout time.Duration) {
	for _, p := range d.m.Fleet {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		start := time.Now()
		err := p.Probe(pctx)
		cancel()
		if err != nil {
			d.add(Finding{Severity: Warn, Check: "fleet-unreachable", Where: p.Where,
				What: fmt.Sprintf("%s: %v", p.Name, err),
				Fix:  "modgate serves without it, but every replica then fetches from upstreams on its own: check the URL, the credentials (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and the network."})
			continue
		}
		d.add(Finding{Severity: Info, Check: "fleet", Where: p.Where,
			What: fmt.Sprintf("%s answers (%d ms)", p.Name, time.Since(start).Milliseconds())})
	}
}
