package wire

import "strings"

// Kind is the class of a request, as in DESIGN.md's table. It names spans
// and labels metrics, so the set is closed.
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
