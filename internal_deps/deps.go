package deps
import (
	_ "golang.org/x/mod/module"
	_ "golang.org/x/mod/sumdb"
	_ "golang.org/x/mod/zip"
	_ "github.com/rogpeppe/go-internal/testscript"
	_ "github.com/rogpeppe/go-internal/txtar"
	_ "go.yaml.in/yaml/v3"
	_ "golang.org/x/term"
	_ "go.uber.org/goleak"
	_ "github.com/fsnotify/fsnotify"
	_ "gopkg.in/natefinch/lumberjack.v2"
	_ "golang.org/x/sync/singleflight"
)
