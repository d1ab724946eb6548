package policy

import (
	"slices"
	"testing"

	"go.uber.org/goleak"

	"github.com/modgate/modgate/sidecar/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// lumberjack starts one goroutine per rotating file and has no way
		// to stop it (its Close leaves it running).
		goleak.IgnoreTopFunction("gopkg.in/natefinch/lumberjack%2ev2.(*Logger).millRun"),
	)
}

const fullPolicy = "../testdata/policy/full.yaml"

func loadFull(t testing.TB) *Policy {
	t.Helper()
	p, err := Load(fullPolicy)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefault(t *testing.T) {
	for name, p := range map[string]*Policy{"Default()": Default(), "nil": nil} {
		d := p.Decide(Request{Module: "github.com/evil/x", Version: "v1.0.0", Kind: wire.KindZip})
		if want := (Decision{Allow: true, RuleText: "default allow"}); d != want {
			t.Errorf("%s: Decide = %+v, want %+v", name, d, want)
		}
		if pat, ok := p.IsPrivate("github.com/acme/x"); ok {
			t.Errorf("%s: IsPrivate = %q, true", name, pat)
		}
		if ups, ok := p.Route("github.com/acme/x"); ok {
			t.Errorf("%s: Route = %q, true", name, ups)
		}
		if c := p.Contact(); c != "" {
			t.Errorf("%s: Contact = %q", name, c)
		}
		vs := []string{"v1.0.0", "v1.1.0"}
		if got := p.FilterVersions(Request{Module: "m"}, vs); !slices.Equal(got, vs) {
			t.Errorf("%s: FilterVersions = %q", name, got)
		}
		if got := p.PrivatePatterns(); got != nil {
			t.Errorf("%s: PrivatePatterns = %q", name, got)
		}
	}
}

func TestAccessors(t *testing.T) {
	p := loadFull(t)
	if got, want := p.Contact(), "ask #platform-builds"; got != want {
		t.Errorf("Contact = %q, want %q", got, want)
	}
	wantPrivate := []string{"*.corp.example.test", "github.com/acme/*", "example.test/private", "example.test/secret/*"}
	got := p.PrivatePatterns()
	if !slices.Equal(got, wantPrivate) {
		t.Errorf("PrivatePatterns = %q, want %q", got, wantPrivate)
	}
	got[0] = "changed"
	if p.PrivatePatterns()[0] == "changed" {
		t.Error("PrivatePatterns returns the policy's own slice")
	}
	if got, want := p.Upstreams(), []string{"internal", "public"}; !slices.Equal(got, want) {
		t.Errorf("Upstreams = %q, want %q", got, want)
	}
}

func TestDecisionString(t *testing.T) {
	if s := (Decision{Allow: true}).String(); s != "allow" {
		t.Errorf("allow decision: %q", s)
	}
	if s := (Decision{}).String(); s != "deny" {
		t.Errorf("deny decision: %q", s)
	}
}

func TestKindBits(t *testing.T) {
	var seen kindSet
	for _, k := range wire.Kinds() {
		b := kindBit(k)
		if b == 0 || seen&b != 0 {
			t.Errorf("kind %q: bit %#x (seen %#x)", k, b, seen)
		}
		seen |= b
	}
	if kindBit("") != 0 || kindBit("ZIP") != 0 {
		t.Error("unknown kinds must have no bit")
	}
}
