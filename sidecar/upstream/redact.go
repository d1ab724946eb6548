package upstream

import (
	"net/url"
	"regexp"
	"strings"
)

// redactedSecret stands in for a hidden password or token, as
// url.URL.Redacted writes it.
const redactedSecret = "xxxxx"

// RedactURL returns raw, a URL as a user configured it, with its
// credentials hidden, for logs, pages, errors and traces. A password
// becomes "xxxxx" (as url.URL.Redacted writes it); a user name without a
// password is most likely a token ("https://TOKEN@host") and is hidden
// whole, except in an ssh URL ("ssh://git@host"). A string that does
// not parse as a URL loses everything between its "://" and its last "@",
// if it has both: better a path hidden too than a password shown.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	switch {
	case err == nil && u.User != nil:
		return redactUser(u).String()
	case err == nil:
		return raw
	}
	if i := strings.Index(raw, "://"); i >= 0 {
		if j := strings.LastIndex(raw[i+3:], "@"); j >= 0 {
			return raw[:i+3] + redactedSecret + raw[i+3+j:]
		}
	}
	return RedactText(raw)
}

// redactUser returns a copy of u with its credentials hidden.
func redactUser(u *url.URL) *url.URL {
	if u.User == nil {
		return u
	}
	r := *u
	switch _, ok := u.User.Password(); {
	case ok:
		r.User = url.UserPassword(u.User.Username(), redactedSecret)
	case isSSH(u.Scheme):
		return u
	default:
		r.User = url.User(redactedSecret)
	}
	return &r
}

// userinfoRE finds the user information of URLs in free text: from a
// scheme's "://" to the last "@" before the authority ends at a space,
// "/", "?" or "#" (url.Parse splits at the last "@" too, so a password
// holding an "@" is hidden whole). Quotes and the like are taken in: a
// quoted password must not end the match early.
var userinfoRE = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.\-]*://)([^\s/?#]*)@`)

// isSSH reports whether scheme is ssh's, where a user name alone is a
// login ("ssh://git@host"), not a token.
func isSSH(scheme string) bool {
	return strings.HasSuffix(strings.ToLower(scheme), "ssh")
}

// schemeRE finds credentials written as an HTTP header or its value in
// free text (an auth command's standard error, an upstream's error
// answer): "Authorization: anything", "Proxy-Authorization: ...", or a
// "Bearer TOKEN" / "Basic BASE64" / "token TOKEN" credential. The value
// becomes "xxxxx"; the scheme word stays.
var schemeRE = regexp.MustCompile(`(?i)((?:proxy-)?authorization\s*[:=]\s*"?(?:(?:bearer|basic|token|negotiate|digest)\s+)?)[^\s",;]+|\b((?:Bearer|Basic)\s+)[A-Za-z0-9\-._~+/]{8,}=*`)

// RedactText hides the credentials of every URL in s (a GOPROXY list, an
// error message, a log line) as RedactURL does, and the values of
// Authorization headers and Bearer or Basic credentials written in it.
func RedactText(s string) string {
	if strings.Contains(s, "uthorization") || strings.Contains(s, "UTHORIZATION") || strings.Contains(s, "Bearer") || strings.Contains(s, "Basic") {
		s = schemeRE.ReplaceAllStringFunc(s, func(m string) string {
			sub := schemeRE.FindStringSubmatch(m)
			if sub[1] != "" {
				return sub[1] + redactedSecret
			}
			// "Basic authentication": a bare scheme followed by a word of
			// lower-case letters is prose, not a credential.
			if tok := m[len(sub[2]):]; strings.Trim(tok, "abcdefghijklmnopqrstuvwxyz") == "" {
				return m
			}
			return sub[2] + redactedSecret
		})
	}
	if !strings.Contains(s, "@") {
		return s
	}
	return userinfoRE.ReplaceAllStringFunc(s, func(m string) string {
		sub := userinfoRE.FindStringSubmatch(m)
		scheme, info := sub[1], sub[2]
		if user, _, ok := strings.Cut(info, ":"); ok {
			return scheme + user + ":" + redactedSecret + "@"
		}
		if isSSH(strings.TrimSuffix(scheme, "://")) {
			return m
		}
		return scheme + redactedSecret + "@"
	})
}
