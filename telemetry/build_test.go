package telemetry

import (
	"strings"
	"testing"

	"golang.org/x/mod/module"
)

func TestTraceContextInURLs(t *testing.T) {
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	sc, err := ParseTraceparent(tp)
	if err != nil || FormatTraceparent(sc) != tp {
		t.Fatalf("ParseTraceparent(%q) = %v, %v", tp, sc, err)
	}
	for _, bad := range []string{"", "zzz", tp[:54], "ff" + tp[2:], strings.Replace(tp, "4bf9", "0000", 1)[:3] + strings.Repeat("0", 32) + tp[35:], tp + strings.Repeat("-aa", 40)} {
		if _, err := ParseTraceparent(bad); err == nil {
			t.Errorf("ParseTraceparent(%q) accepted", bad)
		}
	}
	if got := TraceGOPROXY("http://127.0.0.1:7070/", sc); got != "http://127.0.0.1:7070/.trace/"+tp {
		t.Errorf("TraceGOPROXY = %q", got)
	}
	// No module path can start with the element, so a GOPROXY path that
	// does is never a module request.
	if err := module.CheckPath(TracePathElem + "/x"); err == nil {
		t.Errorf("%s/x is a valid module path", TracePathElem)
	}
	for _, user := range []string{"", "alice", "alice+bob", "trace-x"} {
		name, got, ok := SplitTraceUser(TraceUser(user, sc))
		if !ok || name != user || got.TraceID() != sc.TraceID() {
			t.Errorf("SplitTraceUser(TraceUser(%q)) = %q, %v, %v", user, name, got, ok)
		}
	}
	for _, user := range []string{"alice", "alicetrace-" + tp, "trace-garbage", "alice+trace-" + tp[:20]} {
		if name, _, ok := SplitTraceUser(user); ok || name != user {
			t.Errorf("SplitTraceUser(%q) = %q, %v; want it left alone", user, name, ok)
		}
	}
}

func TestCompareBuilds(t *testing.T) {
	base := BuildSummary{Requests: 60, WaitMS: 40,
		ByKind:    map[string]KindSummary{"zip": {Requests: 20, MeanMS: 2}, "info": {Requests: 20, MeanMS: 1}},
		Upstreams: map[string]UpstreamTime{"public": {SumMS: 60}, "mirror": {SumMS: 20}}}
	noisy := base
	noisy.WaitMS, noisy.ByKind = 120, map[string]KindSummary{"zip": {Requests: 20, MeanMS: 6}, "info": {Requests: 20, MeanMS: 3}}
	if c, err := CompareBuilds(base, noisy, 1.5); err != nil || len(c.Exceeded) > 0 {
		t.Errorf("a build 80 ms slower is a regression: %+v, %v", c, err)
	}
	slow := base
	slow.WaitMS, slow.ByKind = 3000, map[string]KindSummary{"zip": {Requests: 20, MeanMS: 300}, "info": {Requests: 20, MeanMS: 1}}
	slow.Upstreams = map[string]UpstreamTime{"public": {SumMS: 70}, "mirror": {SumMS: 6000}}
	c, err := CompareBuilds(base, slow, 1.5)
	if err != nil || len(c.Exceeded) != 2 || c.Worst != "mirror" {
		t.Errorf("CompareBuilds of a slow build: %+v, %v; want module time and zip past the ratio, at mirror", c, err)
	}
	if _, err := CompareBuilds(BuildSummary{}, slow, 1.5); err == nil {
		t.Errorf("an empty baseline compared")
	}
}
