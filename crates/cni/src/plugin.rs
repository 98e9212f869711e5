//! The shape of a plugin and how it is called: a row of the plugin table ([`Plugin`], the reference `skel`'s
//! `CNIFuncs`: one function per verb), the context every verb gets ([`Ctx`], carrying the executor that runs
//! delegates), and the default executor ([`DefaultExec`]).
//!
//! The modules depend one way only: `skel` (arguments, entry point) ← `invoke` (the [`Exec`] trait, fork/exec) ←
//! `plugin` (this) ← `plugins` (the table and the plugins). The default executor gets the table handed in, so
//! nothing here names a plugin.

use crate::identity;
use crate::invoke::{self, Exec, LocalBoxFuture};
use crate::skel::{self, CmdArgs, Command, Outcome};
use crate::types::NetConf;
use std::path::{Path, PathBuf};

/// The table row of a chained plugin that delegates nothing: `async fn add/del/check(&CmdArgs, &NetConf)` in the
/// module that invokes it, spec versions 0.3.0–1.1.0, no GC or STATUS (as the reference's tuning and bandwidth).
macro_rules! chained_row {
    ($name:literal) => {
        $crate::plugin::Plugin {
            name: $name,
            versions: $crate::version::CHAINED,
            add: |_, args, conf| Box::pin(async move { add(args, conf).await.map(Some) }),
            del: |_, args, conf| Box::pin(async move { del(args, conf).await.map(|()| None) }),
            check: |_, args, conf| Box::pin(async move { check(args, conf).await.map(|()| None) }),
            gc: None,
            status: None,
        }
    };
}
pub(crate) use chained_row;

/// The table row of a main plugin (bridge, ptp, ...): every verb parses the plugin's settings first with
/// `$conf::from_conf` (a bad one is a config error whatever the command), then calls `async fn
/// add/del/check/status(&Ctx, &CmdArgs, &NetConf, &$conf)` of the module that invokes it, and `gc` too when the
/// row says `gc: yes`. Spec versions: all.
macro_rules! main_row {
    (@verb $f:ident, $conf:ty, $wrap:expr) => {
        |ctx, args, conf| {
            Box::pin(async move {
                let c = <$conf>::from_conf(conf)?;
                $f(ctx, args, conf, &c).await.map($wrap)
            })
        }
    };
    (@gc yes, $conf:ty) => { Some($crate::plugin::main_row!(@verb gc, $conf, |()| None)) };
    (@gc no, $conf:ty) => { None };
    ($name:literal, $conf:ty, gc: $gc:ident) => {
        $crate::plugin::Plugin {
            name: $name,
            versions: $crate::version::SUPPORTED,
            add: $crate::plugin::main_row!(@verb add, $conf, Some),
            del: $crate::plugin::main_row!(@verb del, $conf, |()| None),
            check: $crate::plugin::main_row!(@verb check, $conf, |()| None),
            gc: $crate::plugin::main_row!(@gc $gc, $conf),
            status: Some($crate::plugin::main_row!(@verb status, $conf, |()| None)),
        }
    };
}
pub(crate) use main_row;

/// One verb of a plugin: the context, the arguments, and the configuration already parsed and checked.
pub type Verb = for<'a> fn(&'a Ctx<'a>, &'a CmdArgs, &'a NetConf) -> LocalBoxFuture<'a, Outcome>;

/// A plugin: its CNI type (and binary name) and a function per verb. VERSION is answered by the skeleton from
/// the supported versions, so it has no function; a plugin without GC or STATUS succeeds there doing nothing
/// (as the reference skel does when `CNIFuncs.GC` or `.Status` is nil).
#[derive(Clone, Copy)]
pub struct Plugin {
    /// The CNI `type`.
    pub name: &'static str,
    /// The spec versions it speaks (what VERSION answers; any other config version is code 1).
    pub versions: &'static [&'static str],
    /// ADD.
    pub add: Verb,
    /// DEL.
    pub del: Verb,
    /// CHECK.
    pub check: Verb,
    /// GC (spec 1.1.0).
    pub gc: Option<Verb>,
    /// STATUS (spec 1.1.0).
    pub status: Option<Verb>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).finish()
    }
}

impl Plugin {
    /// Runs the plugin on arguments as a runtime passes them: the configuration is parsed and checked the way the
    /// process entry point does, so in-process and exec'd delegates behave alike.
    pub fn run<'a>(&'a self, ctx: &'a Ctx<'a>, args: CmdArgs) -> LocalBoxFuture<'a, Outcome> {
        Box::pin(async move {
            let conf = skel::load_conf(&args, self.versions)?;
            self.call(ctx, &args, &conf).await
        })
    }

    /// Runs the verb for `args.command` on an already parsed configuration.
    pub async fn call(&self, ctx: &Ctx<'_>, args: &CmdArgs, conf: &NetConf) -> Outcome {
        let verb = match args.command {
            Command::Add => self.add,
            Command::Del => self.del,
            Command::Check => self.check,
            Command::Gc => match self.gc {
                Some(v) => v,
                None => return Ok(None),
            },
            Command::Status => match self.status {
                Some(v) => v,
                None => return Ok(None),
            },
            Command::Version => return Ok(None),
        };
        verb(ctx, args, conf).await
    }
}

/// What every verb gets besides its arguments.
pub struct Ctx<'a> {
    /// Finds and runs delegates.
    pub exec: &'a dyn Exec,
}

impl Ctx<'_> {
    /// Runs the plugin of type `plugin` from `args.path` for `args.command`, with `conf` as its configuration and
    /// the caller's environment otherwise.
    pub async fn delegate(&self, plugin: &str, args: &CmdArgs, conf: Vec<u8>) -> Outcome {
        let path = self.exec.find(plugin, &args.path)?;
        self.exec.run(&path, args.with_stdin(conf)).await
    }
}

/// The executor of the plugin binaries: a delegate whose file on `CNI_PATH` is this very build (its
/// [`identity`] marker equals ours) and whose type is in the table runs in-process, since exec'ing it would run
/// the same code with the same effects at the cost of a fork/exec; anything else, a distro's plugin beside ours
/// or another version of ours included, is exec'd. `FLANNEL_RS_DELEGATE_EXEC=1` execs everything.
pub struct DefaultExec {
    table: &'static [Plugin],
}

impl DefaultExec {
    /// An executor running the plugins of `table` in-process when they are this build.
    pub fn new(table: &'static [Plugin]) -> Self {
        Self { table }
    }

    /// The table entry to run in-process for the file at `path`, if any: the file's name is the plugin's type
    /// (what [`invoke::find_in_path`] looked up) and the file is this build. The cheap test first: reading the
    /// file is only needed for our own types.
    pub fn in_process(&self, path: &Path) -> Option<&'static Plugin> {
        if invoke::force_exec() {
            return None;
        }
        let name = path.file_name()?.to_str()?;
        let plugin = self.table.iter().find(|p| p.name == name)?;
        identity::is_this_build(path).then_some(plugin)
    }
}

impl Exec for DefaultExec {
    fn find(&self, plugin: &str, cni_path: &str) -> Result<PathBuf, crate::CniError> {
        invoke::find_in_path(plugin, cni_path)
    }

    fn run<'a>(&'a self, path: &'a Path, args: CmdArgs) -> LocalBoxFuture<'a, Outcome> {
        Box::pin(async move {
            match self.in_process(path) {
                Some(p) => {
                    let ctx = Ctx { exec: self };
                    p.run(&ctx, args).await
                }
                None => invoke::exec(path, &args),
            }
        })
    }
}
