package sidecar

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"golang.org/x/mod/module"
	"golang.org/x/mod/semver"
	"golang.org/x/mod/sumdb/tlog"
	modzip "golang.org/x/mod/zip"

	"github.com/modgate/modgate/sidecar/wire"
)

// Kind is the class of a request (wire.Kind).
type Kind = wire.Kind

// The request kinds.
const (
	KindList           = wire.KindList
	KindInfo           = wire.KindInfo
	KindMod            = wire.KindMod
	KindZip            = wire.KindZip
	KindLatest         = wire.KindLatest
	KindSumDBSupported = wire.KindSumDBSupported
	KindSumDBLookup    = wire.KindSumDBLookup
	KindSumDBTile      = wire.KindSumDBTile
	KindSumDBLatest    = wire.KindSumDBLatest
	KindGoGet          = wire.KindGoGet
	KindVCS            = wire.KindVCS
	KindTunnel         = wire.KindTunnel
	KindOther          = wire.KindOther
)

// maxBody is the most an answer of kind k may carry: the go command's own
// limits for zips and go.mod files, a generous bound for the other module
// protocol answers, and no bound (-1) for what forward mode passes on
// (git packs are as large as their repositories).
func maxBody(k Kind) int64 {
	switch k {
	case KindZip:
		return modzip.MaxZipFile
	case KindMod:
		return modzip.MaxGoMod
	case KindInfo, KindList, KindLatest, KindSumDBSupported, KindSumDBLookup, KindSumDBTile, KindSumDBLatest:
		return 16 << 20
	}
	return -1
}

// Request is a classified module request.
type Request struct {
	Kind Kind
	// Module and Version are decoded ("github.com/Azure/x", not
	// "github.com/!azure/x"). Version is empty for list and latest.
	Module, Version string
	// SumDB is the checksum database's name for the sumdb kinds.
	SumDB string
	// Path is the escaped path to ask an upstream for: the request path
	// for proxy kinds, the part after /sumdb/<name> for sumdb kinds.
	Path string
}

// ErrNotModuleRequest is returned for a path that is not part of the GOPROXY
// protocol at all (reverse mode answers 404), as opposed to a malformed one.
var ErrNotModuleRequest = errors.New("not a module proxy request")

// ClassifyReverse classifies the path of an origin-form request to modgate
// as a GOPROXY. A path that has the protocol's shape but does not decode
// (bad escapes, "..", NUL, capitals in an escaped path, a non-canonical
// version) is an error that names what is wrong; the caller answers 400.
func ClassifyReverse(p string) (Request, error) {
	if !strings.HasPrefix(p, "/") {
		return Request{}, ErrNotModuleRequest
	}
	if rest, ok := strings.CutPrefix(p, "/sumdb/"); ok {
		name, sub, _ := strings.Cut(rest, "/")
		r, err := classifySumDB("/" + sub)
		if err != nil {
			return r, err
		}
		if err := checkSumDBName(name); err != nil {
			return Request{}, err
		}
		r.SumDB = name
		return r, nil
	}
	return classifyProxy(p)
}

func classifyProxy(p string) (Request, error) {
	r := Request{Path: p}
	escMod, rest, ok := strings.Cut(p[1:], "/@v/")
	switch {
	case ok:
		switch {
		case rest == "list":
			r.Kind = KindList
		case strings.HasSuffix(rest, ".info"):
			r.Kind = KindInfo
		case strings.HasSuffix(rest, ".mod"):
			r.Kind = KindMod
		case strings.HasSuffix(rest, ".zip"):
			r.Kind = KindZip
		default:
			return r, ErrNotModuleRequest
		}
		if r.Kind != KindList {
			escVer := rest[:strings.LastIndexByte(rest, '.')]
			v, err := decodeVersion(escVer)
			if err != nil {
				return r, err
			}
			r.Version = v
		}
	case strings.HasSuffix(p, "/@latest"):
		r.Kind = KindLatest
		escMod = strings.TrimSuffix(p[1:], "/@latest")
	default:
		return r, ErrNotModuleRequest
	}
	mod, err := decodePath(escMod)
	if err != nil {
		return r, err
	}
	r.Module = mod
	return r, nil
}

// decodePath decodes and checks an escaped module path.
func decodePath(esc string) (string, error) {
	mod, err := module.UnescapePath(esc)
	if err == nil {
		return mod, nil
	}
	if strings.ToLower(esc) != esc {
		return "", fmt.Errorf("invalid module path %q: an escaped path has no capital letters (write !x for X)", esc)
	}
	return "", fmt.Errorf("invalid module path %q: %v", esc, unwrapModuleError(err))
}

// decodeVersion decodes an escaped version and insists on a canonical
// semantic version: proxies serve only those, and it keeps odd strings
// (branch names, "..", NUL) away from upstreams and caches.
func decodeVersion(esc string) (string, error) {
	v, err := module.UnescapeVersion(esc)
	if err != nil {
		return "", fmt.Errorf("invalid version %q: %v", esc, unwrapModuleError(err))
	}
	if !semver.IsValid(v) || module.CanonicalVersion(v) != v {
		if c := module.CanonicalVersion(v); c != "" {
			return "", fmt.Errorf("version %q is not canonical (want %s)", v, c)
		}
		return "", fmt.Errorf("version %q is not a semantic version like v1.2.3", v)
	}
	return v, nil
}

func classifySumDB(sub string) (Request, error) {
	r := Request{Path: sub}
	switch {
	case sub == "/supported":
		r.Kind = KindSumDBSupported
	case sub == "/latest":
		r.Kind = KindSumDBLatest
	case strings.HasPrefix(sub, "/lookup/"):
		r.Kind = KindSumDBLookup
		escMod, escVer, ok := strings.Cut(sub[len("/lookup/"):], "@")
		if !ok {
			return r, fmt.Errorf("invalid checksum database lookup %q: want module@version", sub)
		}
		mod, err := decodePath(escMod)
		if err != nil {
			return r, err
		}
		v, err := decodeVersion(escVer)
		if err != nil {
			return r, err
		}
		r.Module, r.Version = mod, v
	case strings.HasPrefix(sub, "/tile/"):
		r.Kind = KindSumDBTile
		if _, err := tlog.ParseTilePath(sub[1:]); err != nil {
			return r, fmt.Errorf("invalid checksum database tile %q", sub)
		}
	default:
		return r, ErrNotModuleRequest
	}
	return r, nil
}

// checkSumDBName accepts what can be a host name: the name becomes the host
// of a direct connection when no upstream serves the database.
func checkSumDBName(name string) error {
	if name == "" || len(name) > 253 || strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789.-") != "" ||
		strings.HasPrefix(name, ".") || strings.Contains(name, "..") {
		return fmt.Errorf("invalid checksum database name %q", name)
	}
	return nil
}

// unwrapModuleError drops the path that module's errors repeat.
func unwrapModuleError(err error) error {
	var ie *module.InvalidPathError
	if errors.As(err, &ie) {
		return ie.Err
	}
	return err
}

// classifyForward classifies a request to an origin host in forward mode:
// the GOPROXY protocol (the host is a proxy), the checksum database's
// endpoints (the host is the configured database), ?go-get=1 discovery,
// git smart HTTP, or other. Paths with a module protocol's shape that do not
// decode are errors, as in reverse mode.
func classifyForward(host, p, rawQuery, sumdbName string) (Request, error) {
	query, _ := url.ParseQuery(rawQuery)
	switch {
	case query.Get("go-get") == "1":
		mod := strings.TrimSuffix(host+p, "/")
		if err := module.CheckImportPath(mod); err != nil {
			return Request{}, fmt.Errorf("invalid import path %q in go-get request: %v", mod, unwrapModuleError(err))
		}
		return Request{Kind: KindGoGet, Module: mod, Path: p}, nil
	case strings.HasSuffix(p, "/info/refs") && strings.HasPrefix(query.Get("service"), "git-"),
		strings.HasSuffix(p, "/git-upload-pack"), strings.HasSuffix(p, "/git-receive-pack"):
		repo := p[:strings.LastIndex(p, "/")]
		repo = strings.TrimSuffix(strings.TrimSuffix(repo, "/info"), ".git")
		r := Request{Kind: KindVCS, Path: p}
		if mod := host + repo; module.CheckImportPath(mod) == nil {
			r.Module = mod // a repository is named like the module it holds
		}
		return r, nil
	case sumdbName != "" && strings.EqualFold(host, sumdbName):
		r, err := classifySumDB(p)
		if errors.Is(err, ErrNotModuleRequest) {
			return Request{Kind: KindOther, Path: p}, nil
		}
		r.SumDB = sumdbName
		return r, err
	}
	r, err := ClassifyReverse(p)
	if errors.Is(err, ErrNotModuleRequest) {
		return Request{Kind: KindOther, Path: p}, nil
	}
	return r, err
}
