package doctor

import (
	"context"
	"fmt"
	"os"
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

// checkFleetSecret warns when the fleet's secret (which signs what the
// replicas tell each other through Redis) is readable by other users of
// the machine. Its absence or shortness is a config error already.
func (d *run) checkFleetSecret() {
	f := d.m.FleetSecretFile
	if f == "" {
		return
	}
	st, err := os.Stat(f)
	if err != nil {
		return // the config's own error says so
	}
	if st.Mode().Perm()&0o077 != 0 {
		d.add(Finding{Severity: Warn, Check: "fleet-secret", Where: f,
			What: fmt.Sprintf("the fleet's secret is readable by other users (mode %v): whoever reads it can forge breaker news and leases", st.Mode().Perm()),
			Fix:  "chmod 600 " + f + " (or 0440 with a group only modgate is in)"})
		return
	}
	d.add(Finding{Severity: Info, Check: "fleet-secret", Where: f, What: "the fleet's secret is readable by its owner only"})
}
