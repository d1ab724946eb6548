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
// whole. Text that does not parse as a URL is redacted as RedactText does.
func RedactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.User == nil {
		return RedactText(raw)
	}
	return redactUser(u).String()
}

// redactUser returns a copy of u with its credentials hidden.
func redactUser(u *url.URL) *url.URL {
	if u.User == nil {
		return u
	}
	r := *u
	if _, ok := u.User.Password(); ok {
		r.User = url.UserPassword(u.User.Username(), redactedSecret)
	} else {
		r.User = url.User(redactedSecret)
	}
	return &r
}

// userinfoRE finds the user information of URLs in free text: from a
// scheme's "://" to the last "@" before the host ends (url.Parse splits at
// the last "@" too, so a password holding an "@" is hidden whole).
var userinfoRE = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.\-]*://)([^\s/?#"'<>\\]*)@`)

// RedactText hides the credentials of every URL in s (a GOPROXY list, an
// error message, a log line) as RedactURL does.
func RedactText(s string) string {
	if !strings.Contains(s, "@") {
		return s
	}
	return userinfoRE.ReplaceAllStringFunc(s, func(m string) string {
		sub := userinfoRE.FindStringSubmatch(m)
		scheme, info := sub[1], sub[2]
		if user, _, ok := strings.Cut(info, ":"); ok {
			return scheme + user + ":" + redactedSecret + "@"
		}
		return scheme + redactedSecret + "@"
	})
}
