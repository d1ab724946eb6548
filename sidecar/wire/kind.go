package wire

import (
	"slices"
	"strings"
)

// Kind is the class of a request (README.md, Architecture). It names spans,
// labels metrics and selects policy rules, so the set is closed: Kinds lists
// it.
type Kind string

// The request kinds.
const (
	KindList           Kind = "list"
	KindInfo           Kind = "info"
	KindMod            Kind = "mod"
	KindZip            Kind = "zip"
	KindLatest         Kind = "latest"
	KindSumDBSupported Kind = "sumdb-supported"
	KindSumDBLookup    Kind = "sumdb-lookup"
	KindSumDBTile      Kind = "sumdb-tile"
	KindSumDBLatest    Kind = "sumdb-latest"
	KindGoGet          Kind = "go-get"
	KindVCS            Kind = "vcs"
	KindTunnel         Kind = "tunnel"
	KindOther          Kind = "other"
)

// IsSumDB reports whether k is one of the checksum-database kinds.
func (k Kind) IsSumDB() bool { return strings.HasPrefix(string(k), "sumdb-") }

// IsModuleProtocol reports whether k is a request of the module proxy or
// checksum database protocol.
func (k Kind) IsModuleProtocol() bool {
	switch k {
	case KindList, KindInfo, KindMod, KindZip, KindLatest:
		return true
	}
	return k.IsSumDB()
}

// IsArtifact reports whether k names an immutable module artifact.
func (k Kind) IsArtifact() bool { return k == KindInfo || k == KindMod || k == KindZip }

// kinds is the closed set, in the order of the constants above.
var kinds = [...]Kind{KindList, KindInfo, KindMod, KindZip, KindLatest,
	KindSumDBSupported, KindSumDBLookup, KindSumDBTile, KindSumDBLatest,
	KindGoGet, KindVCS, KindTunnel, KindOther}

// Kinds returns every request kind, in the order of the constants above.
// The slice is the caller's.
func Kinds() []Kind { return slices.Clone(kinds[:]) }

// Known reports whether k is one of the request kinds.
func (k Kind) Known() bool { return slices.Contains(kinds[:], k) }

// Normal returns k if it is one of the request kinds, else KindOther: the
// kind metrics and span names record.
func (k Kind) Normal() Kind {
	if k.Known() {
		return k
	}
	return KindOther
}
