//! The PHP classes. Each method converts arguments, calls [`crate::session`], and converts the
//! result; bytes cross the boundary as Zend strings both ways (never as UTF-8 `String`s).

// The ext-php-rs macros re-emit `BinarySlice<'_, u8>` argument types with a hidden lifetime.
#![allow(elided_lifetimes_in_paths)]
// PHP parameter names come from Rust parameter names, and the documented API has camelCase ones
// (`new TcpRequest(remoteAddr: …)`); the macro expansion repeats them outside the fn itself.
#![allow(non_snake_case)]

use std::cell::RefCell;
use std::ptr;
use std::rc::Rc;
use std::sync::atomic::{AtomicPtr, Ordering};

use ext_php_rs::binary_slice::BinarySlice;
use ext_php_rs::boxed::ZBox;
use ext_php_rs::builders::ClassBuilder;
use ext_php_rs::class::RegisteredClass;
use ext_php_rs::convert::{FromZval, IntoZval, StubLiteral};
use ext_php_rs::enum_::RegisteredEnum;
use ext_php_rs::exception::PhpException;
use ext_php_rs::flags::{ClassFlags, DataType};
use ext_php_rs::prelude::*;
use ext_php_rs::types::{ZendClassObject, ZendHashTable, ZendStr, Zval};
use ext_php_rs::zend::{ce, ClassEntry};

use pier_protocol::memo::Kept;
use pier_protocol::tcp::{EventKind, ReplyKind};
use pier_protocol::TcpEvent as Event;
use pier_protocol::TlsFacts;

use crate::relay::{self, Relay, RelayError, RelaySpec};
use crate::rpc::{self, Json, RpcError};
use crate::session::{Features, Incoming, Session, SessionError, FEATURES, FEATURES_ENV};

/// Registers every class, enum and function with the module.
pub fn register(module: ModuleBuilder<'_>) -> ModuleBuilder<'_> {
    module
        .info_function(module_info)
        .function(wrap_function!(features))
        .startup_function(register_exceptions)
        .request_startup_function(declare_like_php)
        .request_shutdown_function(forget_connections)
        .enumeration::<TcpEvent>()
        .enumeration::<TcpResponse>()
        .class::<Worker>()
        .class::<TcpRequest>()
        .class::<TcpWorker>()
        .class::<Connections>()
}

// ---------------------------------------------------------------------------------------------
// What this build is: `phpversion('pier')` is the crate's version (set by `#[php_module]`).

/// `Pier\features()`: the Pier extensions this build supports ([`FEATURES`]).
#[php_function]
#[php(name = "Pier\\features")]
pub fn features() -> Vec<String> {
    FEATURES.iter().map(|f| (*f).to_owned()).collect()
}

/// The `pier` section of `phpinfo()` and `php --ri pier`.
extern "C" fn module_info(_module: *mut ext_php_rs::zend::ModuleEntry) {
    ext_php_rs::info_table_start!();
    ext_php_rs::info_table_row!("pier support", "enabled");
    ext_php_rs::info_table_row!("version", env!("CARGO_PKG_VERSION"));
    ext_php_rs::info_table_row!("features", FEATURES.join(","));
    ext_php_rs::info_table_end!();
}

// ---------------------------------------------------------------------------------------------
// Exceptions

unsafe extern "C" {
    /// SPL's `RuntimeException`, exported by the PHP binary (SPL is always built in).
    static spl_ce_RuntimeException: *mut ClassEntry;
}

/// `\RuntimeException`, the parent of `Pier\Exception\PierException`.
fn runtime_exception() -> &'static ClassEntry {
    // SAFETY: SPL registers the class entry during engine startup, before any dynamically loaded
    // extension starts, and it lives until the engine shuts down.
    unsafe { &*spl_ce_RuntimeException }
}

// The exceptions are plain PHP exception classes registered with `ClassBuilder` at startup,
// not `#[php_class]` structs: a Rust-backed class gets a `__construct` that refuses to run
// without a Rust constructor, and a Rust constructor cannot call `RuntimeException::__construct`
// (message, code, previous). Without Rust backing, PHP's own constructor is inherited.

/// `Pier\Exception\PierException`, set once at module startup.
static PIER_EXCEPTION: AtomicPtr<ClassEntry> = AtomicPtr::new(ptr::null_mut());
/// `Pier\Exception\RelayException`, set once at module startup.
static RELAY_EXCEPTION: AtomicPtr<ClassEntry> = AtomicPtr::new(ptr::null_mut());
/// `Pier\Exception\ProtocolException`, set once at module startup.
static PROTOCOL_EXCEPTION: AtomicPtr<ClassEntry> = AtomicPtr::new(ptr::null_mut());
/// `Pier\Exception\RpcException`, set once at module startup.
static RPC_EXCEPTION: AtomicPtr<ClassEntry> = AtomicPtr::new(ptr::null_mut());

/// The class entry stored in `slot` by [`register_exceptions`].
fn class_entry(slot: &AtomicPtr<ClassEntry>) -> &'static ClassEntry {
    let ce = slot.load(Ordering::Acquire);
    // SAFETY: the module's startup registers the exception classes before any PHP code can run,
    // and fails the module (so nothing runs) if it could not; class entries live until shutdown.
    unsafe { ce.as_ref() }.unwrap_or_else(|| ce::exception())
}

fn pier_exception() -> &'static ClassEntry {
    class_entry(&PIER_EXCEPTION)
}

/// Module startup: registers `PierException` (extends `\RuntimeException`) and its three final
/// subclasses. Returns SUCCESS (0) or FAILURE (-1), as PHP expects.
///
/// # Safety
///
/// Called by PHP once, during module startup (MINIT), as `startup_func`; never call it yourself.
pub unsafe extern "C" fn register_exceptions(_type: i32, _module_number: i32) -> i32 {
    intern_request_names();
    let registered = ClassBuilder::new("Pier\\Exception\\PierException")
        .extends((runtime_exception, "\\RuntimeException"))
        .registration(|ce, _| PIER_EXCEPTION.store(ce, Ordering::Release))
        .register()
        .and_then(|()| {
            ClassBuilder::new("Pier\\Exception\\RelayException")
                .extends((pier_exception, "\\Pier\\Exception\\PierException"))
                .flags(ClassFlags::Final)
                .registration(|ce, _| RELAY_EXCEPTION.store(ce, Ordering::Release))
                .register()
        })
        .and_then(|()| {
            ClassBuilder::new("Pier\\Exception\\ProtocolException")
                .extends((pier_exception, "\\Pier\\Exception\\PierException"))
                .flags(ClassFlags::Final)
                .registration(|ce, _| PROTOCOL_EXCEPTION.store(ce, Ordering::Release))
                .register()
        })
        .and_then(|()| {
            ClassBuilder::new("Pier\\Exception\\RpcException")
                .extends((pier_exception, "\\Pier\\Exception\\PierException"))
                .flags(ClassFlags::Final)
                .registration(|ce, _| RPC_EXCEPTION.store(ce, Ordering::Release))
                .register()
        });
    if registered.is_ok() {
        0
    } else {
        -1
    }
}

/// Interns `TcpRequest`'s property names and type names for the life of the process.
///
/// [`declare_like_php`] declares the properties on the first request, after ext-php-rs registered
/// the class (it runs the module's startup function before that). A string interned during a
/// request is freed at its end, while the class keeps its property names until engine shutdown;
/// the engine interns a name during a request as the permanent string when one exists, which
/// this makes so. Runs in MINIT, when interning is permanent.
fn intern_request_names() {
    for (name, (_, class)) in REQUEST_PROPERTIES {
        for s in std::iter::once(name).chain(class) {
            // The engine owns interned strings; the returned reference needs no release.
            let _ = ZendStr::new_interned(s, true).into_raw();
        }
    }
}

/// The message of `e` and of each of its causes, joined with ": ".
pub(crate) fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The PHP exception for a session error: transport failures are `RelayException`, everything
/// else (misuse, corrupt frames) is `ProtocolException`.
fn throwable(e: SessionError) -> PhpException {
    let message = describe(&e);
    let class = match e {
        SessionError::Relay(RelayError::Frame(_)) => &PROTOCOL_EXCEPTION,
        SessionError::Relay(_) => &RELAY_EXCEPTION,
        _ => &PROTOCOL_EXCEPTION,
    };
    PhpException::new(message, 0, class_entry(class))
}

/// The PHP exception for a failed RPC call: always `RpcException`.
fn rpc_throwable(e: RpcError) -> PhpException {
    PhpException::new(describe(&e), 0, class_entry(&RPC_EXCEPTION))
}

// ---------------------------------------------------------------------------------------------
// Declarations ext-php-rs 0.16.4 cannot express

/// `MAY_BE_STRING` (Zend/zend_type_info.h: `1 << IS_STRING`); not in ext-php-rs's bindings.
const MAY_BE_STRING: u32 = 1 << 6;
/// `ZEND_ACC_READONLY` (Zend/zend_compile.h); not in ext-php-rs's bindings.
const ZEND_ACC_READONLY: u32 = 1 << 7;
/// `ZEND_ACC_FINAL` (Zend/zend_compile.h).
const ZEND_ACC_FINAL: u32 = 1 << 5;
/// `ZEND_FETCH_CLASS_NO_AUTOLOAD` (Zend/zend_compile.h).
const ZEND_FETCH_CLASS_NO_AUTOLOAD: u32 = 0x80;
/// `ZEND_ACC_PPP_MASK` = public | protected | private (Zend/zend_compile.h).
const ZEND_ACC_PPP_MASK: u32 = 0b111;

/// What the brief's API says and ext-php-rs cannot declare: `Pier\Worker` has no public
/// constructor (only `create()`), and `TcpRequest`'s properties are `public readonly` and typed.
/// ext-php-rs always adds a public `__construct` to a Rust-backed class and has no plain declared
/// properties, so the class entries are adjusted once, on the first request, after the module
/// registered them and before any object exists.
///
/// # Safety
///
/// Called by PHP at request startup (RINIT) as `request_startup_func`; never call it yourself.
pub unsafe extern "C" fn declare_like_php(_type: i32, _module_number: i32) -> i32 {
    static DONE: std::sync::Once = std::sync::Once::new();
    static DECLARED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    DONE.call_once(|| {
        // SAFETY: RINIT runs single-threaded before any PHP code; both classes are registered by
        // then (MINIT succeeded), and their entries live until engine shutdown.
        unsafe {
            private_constructor(Worker::get_metadata().ce());
            final_class("Pier\\Tcp\\TcpEvent");
            final_class("Pier\\Tcp\\TcpResponse");
            let declared = declare_request_properties(TcpRequest::get_metadata().ce())
                && install_event_handlers(TcpWorker::get_metadata().ce());
            DECLARED.store(declared, Ordering::Release);
        }
    });
    REQUEST_LIVE.set(true);
    // Without its properties a request could not be built (nor answered without the handlers the
    // generated ones were swapped for): fail the request rather than crash.
    if DECLARED.load(Ordering::Acquire) {
        0
    } else {
        -1
    }
}

unsafe extern "C" {
    /// `zend_declare_typed_property` (Zend/zend_API.h); not in ext-php-rs's bindings.
    fn zend_declare_typed_property(
        ce: *mut ClassEntry,
        name: *mut ext_php_rs::ffi::zend_string,
        property: *mut Zval,
        access_type: i32,
        doc_comment: *mut ext_php_rs::ffi::zend_string,
        ty: ext_php_rs::ffi::zend_type,
    ) -> *mut ext_php_rs::ffi::zend_property_info;
}

/// `TcpRequest`'s properties, `public readonly` and typed (a scalar type mask or a class), in
/// declaration order: the position of each is its slot in a request object ([`REMOTE_ADDR`] …).
const REQUEST_PROPERTIES: [(&str, (u32, Option<&str>)); 6] = [
    ("remoteAddr", (MAY_BE_STRING, None)),
    ("event", (0, Some("Pier\\Tcp\\TcpEvent"))),
    ("body", (MAY_BE_STRING, None)),
    ("connectionUuid", (MAY_BE_STRING, None)),
    ("server", (MAY_BE_STRING, None)),
    ("state", (MAY_BE_STRING, None)),
];

/// Slot of `remoteAddr` in a request object.
const REMOTE_ADDR: usize = 0;
/// Slot of `event`.
const EVENT: usize = 1;
/// Slot of `body`.
const BODY: usize = 2;
/// Slot of `connectionUuid`.
const CONNECTION_UUID: usize = 3;
/// Slot of `server`.
const SERVER: usize = 4;
/// Slot of `state`.
const STATE: usize = 5;

/// Declares [`REQUEST_PROPERTIES`] on `TcpRequest` as the engine's own declared properties (no
/// Rust getter): a read of `$request->body` is then the VM's slot read (after the first one, the
/// engine caches the slot's offset per opcode), not a call into the object handlers. The engine
/// enforces `readonly` itself. Returns whether each got the slot its index says.
///
/// # Safety
///
/// `ce` must be `TcpRequest`'s registered entry, with no declared property yet and no object, and
/// no PHP code may run concurrently.
unsafe fn declare_request_properties(ce: &ClassEntry) -> bool {
    let ce = ptr::from_ref(ce).cast_mut();
    let mut in_order = true;
    for (slot, (name, (mask, class))) in REQUEST_PROPERTIES.into_iter().enumerate() {
        let ty = match class {
            // Interned and persistent, as the engine's own class-typed declarations are.
            Some(class) => ext_php_rs::ffi::zend_type {
                ptr: ZendStr::new_interned(class, true).into_raw().cast(),
                type_mask: ext_php_rs::ffi::_ZEND_TYPE_NAME_BIT,
            },
            None => ext_php_rs::ffi::zend_type {
                ptr: ptr::null_mut(),
                type_mask: mask,
            },
        };
        // No default (UNDEF): a typed property is uninitialized until a request object is built.
        let mut default = Zval::new();
        default.u1.type_info = 0;
        let name = ZendStr::new_interned(name, true).into_raw();
        // SAFETY: the caller guarantees a registered class without objects; the name and type
        // are persistent interned strings the class keeps.
        let info = unsafe {
            zend_declare_typed_property(
                ce,
                name,
                &raw mut default,
                (ext_php_rs::ffi::ZEND_ACC_PUBLIC | ZEND_ACC_READONLY) as i32,
                ptr::null_mut(),
                ty,
            )
        };
        // SAFETY: a non-null result is the property's info, owned by the class.
        let offset = unsafe { info.as_ref() }.map(|i| i.offset as usize);
        in_order &= offset == Some(slot_offset(slot));
    }
    // [`new_request`] writes exactly these slots.
    // SAFETY: `ce` is a live class entry.
    in_order && unsafe { (*ce).default_properties_count } == REQUEST_PROPERTIES.len() as i32
}

/// The byte offset of property slot `slot` in an object (`OBJ_PROP_TO_OFFSET`).
const fn slot_offset(slot: usize) -> usize {
    std::mem::offset_of!(ext_php_rs::ffi::zend_object, properties_table)
        + slot * std::mem::size_of::<Zval>()
}

/// Marks class `name` final, as PHP marks every enum (ext-php-rs registers enums without it).
///
/// # Safety
///
/// No PHP code may run concurrently; called once, after the module registered its classes.
unsafe fn final_class(name: &str) {
    let mut name = ZendStr::new(name, false);
    // SAFETY: looks up an already registered class without autoloading; the returned entry (or
    // null) is owned by the engine and stays valid until shutdown.
    let ce = unsafe {
        ext_php_rs::ffi::zend_lookup_class_ex(
            &raw mut *name,
            ptr::null_mut(),
            ZEND_FETCH_CLASS_NO_AUTOLOAD,
        )
    };
    // SAFETY: a non-null result is a live class entry we may adjust before any code runs.
    if let Some(ce) = unsafe { ce.as_mut() } {
        ce.ce_flags |= ZEND_ACC_FINAL;
    }
}

/// Makes the class's constructor private, so `new` throws PHP's own `Error`.
///
/// # Safety
///
/// `ce` must be a registered class entry and no PHP code may run concurrently.
unsafe fn private_constructor(ce: &ClassEntry) {
    // SAFETY: the caller guarantees a registered entry; `constructor` is null or points into the
    // class's function table, which lives as long as the class.
    if let Some(ctor) = unsafe { ce.constructor.as_mut() } {
        // SAFETY: every zend_function variant starts with the `common` header.
        let flags = unsafe { &mut ctor.common.fn_flags };
        *flags = (*flags & !(ZEND_ACC_PPP_MASK)) | ext_php_rs::ffi::ZEND_ACC_PRIVATE;
    }
}

// ---------------------------------------------------------------------------------------------
// Enums

/// What happened on a connection.
#[php_enum]
#[php(name = "Pier\\Tcp\\TcpEvent")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpEvent {
    /// A client connected.
    #[php(value = "CONNECTED")]
    Connected,
    /// A packet arrived.
    #[php(value = "DATA")]
    Data,
    /// The connection is gone.
    #[php(value = "CLOSE")]
    Close,
    /// An event name this extension does not know.
    #[php(value = "UNKNOWN")]
    Unknown,
}

impl From<EventKind> for TcpEvent {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Connected => TcpEvent::Connected,
            EventKind::Data => TcpEvent::Data,
            EventKind::Close => TcpEvent::Close,
            EventKind::Unknown => TcpEvent::Unknown,
        }
    }
}

/// What the server should do with the connection after a reply.
#[php_enum]
#[php(name = "Pier\\Tcp\\TcpResponse")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpResponse {
    /// Write the body, keep reading.
    #[php(value = "WRITE")]
    Respond,
    /// Write the body, then close.
    #[php(value = "WRITECLOSE")]
    RespondClose,
    /// Write nothing, keep reading.
    #[php(value = "CONTINUE")]
    Read,
    /// Close without writing.
    #[php(value = "CLOSE")]
    Close,
}

impl StubLiteral for TcpResponse {
    fn stub_literal(&self) -> String {
        format!("\\Pier\\Tcp\\TcpResponse::{}", self.to_name())
    }
}

impl From<TcpResponse> for ReplyKind<'static> {
    fn from(r: TcpResponse) -> Self {
        match r {
            TcpResponse::Respond => ReplyKind::Write,
            TcpResponse::RespondClose => ReplyKind::WriteClose,
            TcpResponse::Read => ReplyKind::Continue,
            TcpResponse::Close => ReplyKind::Close,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bytes in and out

/// A PHP string argument borrowed as bytes, for parameters with a default (`BinarySlice` has no
/// stub literal, so it cannot carry one).
#[derive(Debug, Clone, Copy)]
pub struct Bytes<'a>(&'a [u8]);

impl<'a> FromZval<'a> for Bytes<'a> {
    const TYPE: DataType = DataType::String;

    fn from_zval(zval: &'a Zval) -> Option<Self> {
        zval.zend_str().map(|s| Bytes(s.as_bytes()))
    }
}

impl From<&'static str> for Bytes<'_> {
    fn from(s: &'static str) -> Self {
        Bytes(s.as_bytes())
    }
}

impl StubLiteral for Bytes<'_> {
    fn stub_literal(&self) -> String {
        let mut out = String::from("'");
        for c in String::from_utf8_lossy(self.0).chars() {
            if c == '\'' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('\'');
        out
    }
}

/// `IntoZval` for a newtype over a [`Zval`] that already holds a value of PHP type `$ty`: the
/// zval is returned as it is, and `$ty` declares the return type of the methods returning it
/// (in reflection and the stubs).
macro_rules! zval_of_type {
    ($name:ident, $ty:expr) => {
        impl IntoZval for $name {
            const TYPE: DataType = $ty;
            const NULLABLE: bool = false;

            fn set_zval(self, zv: &mut Zval, _persistent: bool) -> ext_php_rs::error::Result<()> {
                *zv = self.0;
                Ok(())
            }
        }
    };
}

/// A PHP string value (a Zend string, binary-safe), shared by reference count when returned.
#[derive(Debug)]
pub struct PhpString(Zval);

zval_of_type!(PhpString, DataType::String);

impl PhpString {
    /// Another reference to the same Zend string (no copy).
    fn share(&self) -> PhpString {
        PhpString(self.0.shallow_clone())
    }
}

impl Clone for PhpString {
    fn clone(&self) -> Self {
        self.share()
    }
}

impl FromZval<'_> for PhpString {
    const TYPE: DataType = DataType::String;

    fn from_zval(zval: &Zval) -> Option<Self> {
        zval.is_string().then(|| PhpString(zval.shallow_clone()))
    }
}

/// An `array $except` argument: its values as bytes, or None when one of them is not a string (the
/// push and RPC code report that with their own message, after their other checks).
#[derive(Debug, Clone)]
pub struct Uuids<'a>(Option<Vec<&'a [u8]>>);

impl Uuids<'_> {
    /// `[]`, the default.
    pub const NONE: Uuids<'static> = Uuids(Some(Vec::new()));
}

impl<'a> FromZval<'a> for Uuids<'a> {
    const TYPE: DataType = DataType::Array;

    fn from_zval(zval: &'a Zval) -> Option<Self> {
        let array = zval.array()?;
        Some(Uuids(
            array
                .values()
                .map(|v| v.zend_str().map(|s| s.as_bytes()))
                .collect(),
        ))
    }
}

impl StubLiteral for Uuids<'_> {
    fn stub_literal(&self) -> String {
        "[]".to_owned()
    }
}

/// A PHP value for a decoded JSON value, as `json_decode($json, true)` makes it (objects become
/// arrays, integer-like keys integers).
fn php_value(value: &Json) -> Zval {
    let mut zv = Zval::new();
    match value {
        Json::Null => zv.set_null(),
        Json::Bool(b) => zv.set_bool(*b),
        Json::Int(i) => zv.set_long(*i),
        Json::Float(x) => zv.set_double(*x),
        Json::Str(s) => zv.set_zend_string(ZendStr::new(s.as_bytes(), false)),
        Json::List(_) | Json::Map(_) => zv.set_hashtable(php_array_of(value)),
    }
    zv
}

/// A PHP array for a JSON array or object (an empty array for anything else: the RPC client
/// checked what it is).
fn php_array_of(value: &Json) -> ZBox<ZendHashTable> {
    let empty: &[(String, Json)] = &[];
    let (items, entries) = match value {
        Json::List(items) => (items.as_slice(), empty),
        Json::Map(entries) => (&[][..], entries.as_slice()),
        _ => (&[][..], empty),
    };
    let len = items.len() + entries.len();
    let mut ht = ZendHashTable::with_capacity(u32::try_from(len).unwrap_or(u32::MAX));
    // Inserting into a fresh array only fails when the engine is out of memory, which PHP
    // handles by bailing out itself.
    for item in items {
        let _ = ht.push(php_value(item));
    }
    for (key, item) in entries {
        // PHP turns canonical integer keys into integers ("7" => 7), and so does json_decode.
        let _ = match key.parse::<i64>() {
            Ok(i) if i.to_string() == *key => ht.insert(i, php_value(item)),
            _ => ht.insert(key.as_str(), php_value(item)),
        };
    }
    ht
}

unsafe extern "C" {
    /// The engine's interned empty string (`ZSTR_EMPTY_ALLOC()`), set before any module starts.
    static zend_empty_string: *mut ext_php_rs::ffi::zend_string;
}

/// A new PHP string holding `bytes`; the engine's shared empty string for no bytes (an event's
/// state usually is empty: no allocation for it).
fn string(bytes: &[u8]) -> PhpString {
    let mut zv = Zval::new();
    if bytes.is_empty() {
        // SAFETY: the engine sets the interned empty string up at startup and never frees it
        // before shutdown; an interned string is not reference-counted (no flag in the type).
        unsafe {
            zv.value.str_ = zend_empty_string;
            zv.u1.type_info = ext_php_rs::flags::ZvalTypeFlags::InternedStringEx.bits();
        }
    } else {
        // What `set_zend_string` does, without its call and its release of the null replaced:
        // the zval takes the string's one reference, or holds an interned one (ext-php-rs
        // returns the engine's interned one-character strings), which is not reference-counted.
        let s = ZendStr::new(bytes, false);
        // SAFETY: `gc.u.type_info` is how every zend_string's flags are read.
        let interned = unsafe { s.gc.u.type_info } & ext_php_rs::ffi::GC_IMMUTABLE != 0;
        zv.value.str_ = s.into_raw();
        zv.u1.type_info = if interned {
            ext_php_rs::flags::ZvalTypeFlags::InternedStringEx.bits()
        } else {
            ext_php_rs::flags::ZvalTypeFlags::StringEx.bits()
        };
    }
    PhpString(zv)
}

// ---------------------------------------------------------------------------------------------
// Worker

thread_local! {
    /// The process's one relay session: every `Worker::create()` shares it, because the relay's
    /// descriptors (and its read buffer) exist once per process.
    static SESSION: RefCell<Option<Rc<RefCell<PhpSession>>>> = const { RefCell::new(None) };
}

/// The process's session, created on first use from `RR_RELAY` and `PIER_FEATURES`.
fn shared_session() -> Result<Rc<RefCell<PhpSession>>, SessionError> {
    SESSION.with(|slot| {
        if let Some(s) = slot.borrow().as_ref() {
            return Ok(Rc::clone(s));
        }
        let spec = RelaySpec::parse(&std::env::var("RR_RELAY").unwrap_or_default())?;
        let transport = relay::connect(&spec)?;
        let features = Features::parse(std::env::var(FEATURES_ENV).ok().as_deref());
        let session = Rc::new(RefCell::new(PhpSession::new(
            Relay::new(transport),
            features,
        )));
        *slot.borrow_mut() = Some(Rc::clone(&session));
        Ok(session)
    })
}

/// A worker's connection to the server (the relay).
#[php_class]
#[php(name = "Pier\\Worker")]
#[php(flags = ClassFlags::Final)]
#[derive(Debug)]
pub struct Worker {
    /// The relay session shared by every object of this process.
    session: Rc<RefCell<PhpSession>>,
}

#[php_impl]
impl Worker {
    /// The worker for this process, over the relay `RR_RELAY` names (`pipes` by default).
    pub fn create() -> PhpResult<Worker> {
        Ok(Worker {
            session: shared_session().map_err(throwable)?,
        })
    }

    /// Sends an error frame: the server logs it and closes the connection; answers the request.
    pub fn error(&self, message: BinarySlice<'_, u8>) -> PhpResult<()> {
        self.session.borrow_mut().error(&message).map_err(throwable)
    }

    /// Sends the `{"stop":true}` reply: the server replaces this worker and re-runs the event.
    pub fn stop(&self) -> PhpResult<()> {
        self.session.borrow_mut().stop().map_err(throwable)
    }
}

// ---------------------------------------------------------------------------------------------
// TcpRequest

/// One connection event: its six public readonly properties are the engine's own declared
/// properties (`REQUEST_PROPERTIES`, filled when the object is built), so reading one costs what
/// reading a userland readonly property costs; the Rust side keeps what is not a property.
/// Cloneable, like a userland readonly value object (`clone` shares the strings).
#[php_class]
#[php(name = "Pier\\Tcp\\TcpRequest")]
#[php(flags = ClassFlags::Final)]
#[derive(Debug, Clone)]
pub struct TcpRequest {
    /// What TLS negotiated (Pier extension `tls`); `None` for plaintext and hand-built requests.
    tls: Option<Box<TlsFacts<'static>>>,
}

/// Builds a request object: `values` go to the property slots, in [`REQUEST_PROPERTIES`]' order.
///
/// What `ZendClassObject::new` does, without `object_properties_init`: that copies the class's
/// six default values (all "uninitialized") into the slots, which are then overwritten here
/// anyway (~90 instructions per event). [`declare_like_php`] checked the class has exactly these
/// six properties.
fn new_request(
    tls: Option<Box<TlsFacts<'static>>>,
    values: [Zval; 6],
) -> ZBox<ZendClassObject<TcpRequest>> {
    let meta = TcpRequest::get_metadata();
    let ce = ptr::from_ref(meta.ce()).cast_mut();
    // SAFETY: the engine allocates the object with room for the class's property slots after
    // `std` (ZendClassObject is `repr(C)`, `std` last); every field is written before the box is
    // handed out: the standard header, the Rust value, the handlers, all six slots.
    unsafe {
        let request = ext_php_rs::ffi::ext_php_rs_zend_object_alloc(
            std::mem::size_of::<ZendClassObject<TcpRequest>>(),
            ce,
        )
        .cast::<ZendClassObject<TcpRequest>>();
        let request = request
            .as_mut()
            .expect("the engine's allocator bails out, never returns null");
        ext_php_rs::ffi::zend_object_std_init(&raw mut request.std, ce);
        ptr::write(&raw mut request.obj, Some(TcpRequest { tls }));
        request.std.handlers = meta.handlers();
        fill_slots(&mut request.std, values);
        ZBox::from_raw(request)
    }
}

/// The class object of this extension's class `T` whose standard part is `object`.
///
/// # Safety
///
/// `object` must be the standard part of a live object of `T` made by ext-php-rs (its handlers:
/// the Rust value precedes the standard part).
unsafe fn class_object<T: RegisteredClass>(
    object: *mut ext_php_rs::ffi::zend_object,
) -> *mut ZendClassObject<T> {
    // SAFETY: as the caller guarantees, `object` is the `std` field of a ZendClassObject<T>.
    unsafe {
        object
            .byte_sub(std::mem::offset_of!(ZendClassObject<T>, std))
            .cast()
    }
}

/// Whether `object` was made by ext-php-rs for this extension's class `T`: its class entry and
/// ext-php-rs's handler table for `T`, compared by address (the classes are final), which is
/// what makes it the standard part of a `ZendClassObject<T>` ([`class_object`]). Always inlined:
/// as a call it cost the per-event handlers ~11 instructions per message.
#[inline(always)]
fn is_object_of<T: RegisteredClass>(object: &ext_php_rs::ffi::zend_object) -> bool {
    let meta = T::get_metadata();
    ptr::eq(object.ce, meta.ce()) && ptr::eq(object.handlers, meta.handlers())
}

/// The request object `waitRequest()` fills again instead of building a new one (see
/// [`spare_request`]).
#[derive(Debug)]
struct Spare {
    /// The calling function's variable the call's result is about to be assigned to.
    variable: *mut Zval,
    /// The request object that variable holds, its only reference.
    object: *mut ext_php_rs::ffi::zend_object,
}

/// `ZEND_ASSIGN` (Zend/zend_vm_opcodes.h; 22 since PHP 7.0).
const ZEND_ASSIGN: u8 = 22;
/// `IS_VAR` (Zend/zend_compile.h): an operand that is a call's result.
const IS_VAR: u8 = 1 << 2;
/// `IS_CV` (Zend/zend_compile.h): an operand that is a compiled (named) variable.
const IS_CV: u8 = 1 << 3;
/// `GC_OBJECT` (Zend/zend_types.h): an object's `gc.u.type_info` with no flag (not weakly
/// referenced, no destructor or free called) and no GC information (not in the collector's
/// buffer of possible roots).
const GC_OBJECT: u32 = 8;

/// The request object the call `call` may fill again instead of building a new one, if any.
///
/// In the usual loop, `$request = $worker->waitRequest()`, the assignment releases the previous
/// request as soon as the call returns, and that release and the next object's allocation are a
/// fifth of the worker's cost per message. When the call's result goes straight into a plain
/// variable (the opcode after the call is `ASSIGN` of a compiled variable from this very result)
/// and that variable holds the only reference to a request object with no weak reference, no
/// dynamic or materialized properties and not in the cycle collector's buffer, no PHP code can
/// see that object again once the assignment ran: refilling it and handing it over as the result
/// (the variable set to null, so the assignment has nothing to release) looks exactly like a new
/// request and the old one's release. Anything else (another opcode, a reference, a second
/// holder, a weak map key, the result used otherwise, a call from an internal function) gets a
/// new object.
///
/// # Safety
///
/// `call` and `result` must be the frame and return value the engine passed to the running
/// internal call's handler.
unsafe fn spare_request(call: &ext_php_rs::zend::ExecuteData, result: *mut Zval) -> Option<Spare> {
    // SAFETY: the caller's frame, when there is one, is live during the call; its function is
    // live with it. Only a user function's frame has its current opline saved (the VM saves it
    // before any call), and only its oplines are read, within its opcode array.
    unsafe {
        let caller = call.prev_execute_data;
        let function = caller.as_ref()?.func.as_ref()?;
        if u32::from(function.type_) != ext_php_rs::ffi::ZEND_USER_FUNCTION {
            return None;
        }
        let ops = &function.op_array;
        let at = (*caller).opline;
        let first = ops.opcodes.cast_const();
        if at < first || at.offset_from(first) + 1 >= ops.last as isize {
            return None;
        }
        let (call_op, next) = (&*at, &*at.add(1));
        let base = caller.cast::<u8>();
        // The call's result is `result` (the opline is this very call's), assigned to a variable.
        if call_op.result_type != IS_VAR
            || !ptr::eq(base.add(call_op.result.var as usize).cast(), result)
            || next.opcode != ZEND_ASSIGN
            || next.op1_type != IS_CV
            || next.op2_type != IS_VAR
            || next.op2.var != call_op.result.var
        {
            return None;
        }
        let variable = base.add(next.op1.var as usize).cast::<Zval>();
        if (*variable).u1.type_info != ext_php_rs::flags::ZvalTypeFlags::ObjectEx.bits() {
            return None;
        }
        let object = (*variable).value.obj;
        let o = &*object;
        (o.gc.refcount == 1
            && o.gc.u.type_info == GC_OBJECT
            && is_object_of::<TcpRequest>(o)
            && o.properties.is_null())
        .then_some(Spare { variable, object })
    }
}

/// Fills `spare`'s request object with `tls`, `values` (every slot but the body's, in
/// [`REQUEST_PROPERTIES`]' order) and `body` (releasing what it held) and moves its reference
/// from its variable (now null) to the caller: the new request.
///
/// # Safety
///
/// `spare` must be what [`spare_request`] returned for the running call, with no PHP code run
/// since.
unsafe fn refill(
    spare: Spare,
    tls: Option<Box<TlsFacts<'static>>>,
    values: [Zval; 5],
    body: &[u8],
) -> *mut ext_php_rs::ffi::zend_object {
    // SAFETY: the variable and the object are live (the variable holds the object's only
    // reference); the object is a `TcpRequest` of this extension with the six declared slots.
    unsafe {
        (*spare.variable).u1.type_info = ext_php_rs::flags::ZvalTypeFlags::Null.bits();
        (*class_object::<TcpRequest>(spare.object)).obj = Some(TcpRequest { tls });
        let slots = (*spare.object).properties_table.as_mut_ptr();
        let body_slot = slots.add(BODY);
        if !rewrite_string(body_slot, body) {
            replace_slot(body_slot, string(body).0);
        }
        for (i, value) in [REMOTE_ADDR, EVENT, CONNECTION_UUID, SERVER, STATE]
            .into_iter()
            .zip(values)
        {
            replace_slot(slots.add(i), value);
        }
    }
    spare.object
}

/// Puts `value` in the property slot `slot` and gives up the reference the slot held.
///
/// # Safety
///
/// `slot` must be an initialized property slot of a request object that PHP code cannot reach
/// (the previous value is a string or an enum case, the slots' types: releasing it runs no PHP
/// code).
#[inline(always)]
unsafe fn replace_slot(slot: *mut Zval, mut value: Zval) {
    // An initialized property's flags are 0 (what the engine leaves after a write).
    value.u2.extra = 0;
    // SAFETY: as the caller guarantees; the previous value is released once the slot holds the
    // new one.
    unsafe {
        let old = std::mem::ManuallyDrop::new(slot.replace(value));
        release(&old);
    }
}

/// `GC_STRING` (Zend/zend_types.h): a string's `gc.u.type_info` with no flag: not interned, not
/// persistent (allocated by the request's allocator).
const GC_STRING: u32 = 6 | (1 << 4);
/// `IS_STR_VALID_UTF8` (Zend/zend_types.h): PCRE found the string valid UTF-8 (a cache of a fact
/// about its bytes, cleared when they are replaced).
const IS_STR_VALID_UTF8: u32 = 1 << 9;

/// The bytes the engine allocates for a string of `len` bytes (`ZEND_MM_ALIGNED_SIZE(
/// _ZSTR_STRUCT_SIZE(len))`: the header, the bytes, the terminating NUL, rounded up to 8).
const fn string_block(len: usize) -> usize {
    (std::mem::offset_of!(ext_php_rs::ffi::zend_string, val) + len + 1 + 7) & !7
}

/// Writes `bytes` over the string in `slot` instead of releasing it and allocating another, when
/// the slot holds its only reference (nothing else, PHP code included, can see the change) and
/// its block fits `bytes` without wasting more than half of it. The string is then exactly what
/// a new one would be (no cached hash, no flag). Whether it did; the slot is untouched if not.
///
/// The body of the previous request usually qualifies (it was passed to `respond()` and nothing
/// kept it): this saves the allocation, the free and the call of each (~85 instructions per
/// event).
///
/// # Safety
///
/// `slot` must be a property slot of a request object that PHP code cannot reach.
unsafe fn rewrite_string(slot: *mut Zval, bytes: &[u8]) -> bool {
    // SAFETY: a slot is a live zval; a refcounted string's `str_` points to its live header and
    // its block of `string_block(len)` bytes, which is written only within `string_block(new)`.
    unsafe {
        if bytes.is_empty()
            || (*slot).u1.type_info != ext_php_rs::flags::ZvalTypeFlags::StringEx.bits()
        {
            // An empty one is the engine's shared empty string (no allocation to save).
            return false;
        }
        let s = (*slot).value.str_;
        let (have, need) = (string_block((*s).len), string_block(bytes.len()));
        if (*s).gc.refcount != 1
            || (*s).gc.u.type_info & !IS_STR_VALID_UTF8 != GC_STRING
            || need > have
            || have > 2 * need
        {
            return false;
        }
        (*s).gc.u.type_info = GC_STRING;
        (*s).h = 0;
        (*s).len = bytes.len();
        let val = (*s).val.as_mut_ptr().cast::<u8>();
        ptr::copy_nonoverlapping(bytes.as_ptr(), val, bytes.len());
        val.add(bytes.len()).write(0);
    }
    true
}

unsafe extern "C" {
    /// `rc_dtor_func` (Zend/zend_variables.h): frees a value whose reference count reached 0.
    fn rc_dtor_func(p: *mut ext_php_rs::ffi::zend_refcounted);
}

/// Gives up `value`'s reference, as the engine's `zval_ptr_dtor` does; strings (the slots' usual
/// values, never cycle candidates) without its call. `Zval`'s own drop costs ~17 instructions
/// per value more (it first turns the zval into a null).
///
/// # Safety
///
/// `value` must hold a reference of its own that nothing uses afterwards.
unsafe fn release(value: &Zval) {
    // SAFETY: `u1.type_info` is how every zval's type is read; a refcounted value's `counted`
    // points to its live header, whose reference this is.
    unsafe {
        let type_info = value.u1.type_info;
        if type_info & 0xff00 == 0 {
            // Not reference-counted (interned strings, UNDEF, null).
            return;
        }
        if type_info == ext_php_rs::flags::ZvalTypeFlags::StringEx.bits() {
            let counted = value.value.counted;
            (*counted).gc.refcount -= 1;
            if (*counted).gc.refcount == 0 {
                rc_dtor_func(counted);
            }
        } else {
            ext_php_rs::ffi::zval_ptr_dtor(ptr::from_ref(value).cast_mut());
        }
    }
}

/// Moves `values` into the object's six property slots, in [`REQUEST_PROPERTIES`]' order.
///
/// # Safety
///
/// `object` must be a `TcpRequest` whose slots hold nothing (are UNDEF).
unsafe fn fill_slots(object: &mut ext_php_rs::ffi::zend_object, values: [Zval; 6]) {
    let slots = object.properties_table.as_mut_ptr();
    for (i, mut value) in values.into_iter().enumerate() {
        // An initialized property's flags are 0 (what the engine leaves after a write).
        value.u2.extra = 0;
        // SAFETY: the caller guarantees six slots (the class declares them); the zval moves
        // into the slot, which now owns its reference.
        unsafe { slots.add(i).write(value) };
    }
}

/// Whether `value` is UNDEF, what an uninitialized property slot holds.
fn is_undef(value: &Zval) -> bool {
    // SAFETY: `type_info` is the variant every zval's `u1` is read as; its low byte is the type.
    unsafe { value.u1.type_info & 0xff == 0 }
}

/// The value in property slot `slot` of a request (another reference to it).
fn slot_value(request: &ZendClassObject<TcpRequest>, slot: usize) -> PhpResult<Zval> {
    // SAFETY: every `TcpRequest` object has the six declared slots.
    let value = unsafe { &*request.std.properties_table.as_ptr().add(slot) };
    if is_undef(value) {
        // Only an object made without its constructor (reflection) gets here.
        let name = REQUEST_PROPERTIES[slot].0;
        return Err(PhpException::new(
            format!("Typed property Pier\\Tcp\\TcpRequest::${name} must not be accessed before initialization"),
            0,
            ce::error(),
        ));
    }
    Ok(value.shallow_clone())
}

/// The string in property slot `slot` of a request.
fn slot_string(request: &ZendClassObject<TcpRequest>, slot: usize) -> PhpResult<PhpString> {
    slot_value(request, slot).map(PhpString)
}

/// A `Pier\Tcp\TcpEvent` case object held in a zval, so `getEvent()` declares its return type.
#[derive(Debug)]
pub struct EventObject(Zval);

zval_of_type!(EventObject, DataType::object("Pier\\Tcp\\TcpEvent"));

/// `TcpEvent`'s case objects (the class's constant table owns them until the end of the request),
/// looked up by name once and then kept by pointer: a [`TcpWorker`] keeps them for its requests
/// (it cannot outlive the request, so neither can what it keeps).
type EventCases = [std::cell::Cell<*mut ext_php_rs::ffi::zend_object>; 4];

/// No case looked up yet.
fn no_cases() -> EventCases {
    std::array::from_fn(|_| std::cell::Cell::new(ptr::null_mut()))
}

/// A zval holding `event`'s case object, looked up once per `cases`. Always inlined into the
/// per-event path, where it reads one pointer (the lookup is [`first_case`]).
#[inline(always)]
fn event_case(event: TcpEvent, cases: &EventCases) -> Zval {
    let known = &cases[event as usize];
    let case = known.get();
    if case.is_null() {
        return first_case(event, known);
    }
    let mut zv = Zval::new();
    // SAFETY: the case object lives until the end of the request, which `cases`' owner does not
    // outlive; the zval takes a reference of its own (what `set_object` does, without first
    // releasing the null it replaces).
    unsafe {
        (*case).gc.refcount += 1;
        zv.value.obj = case;
        zv.u1.type_info = ext_php_rs::flags::ZvalTypeFlags::ObjectEx.bits();
    }
    zv
}

/// A zval holding `event`'s case object, looked up by name and kept in `known`.
#[cold]
fn first_case(event: TcpEvent, known: &std::cell::Cell<*mut ext_php_rs::ffi::zend_object>) -> Zval {
    let mut zv = Zval::new();
    // Turning a case into a zval cannot fail: the enum is registered with every case.
    let _ = event.set_zval(&mut zv, false);
    if let Some(object) = zv.object_mut() {
        known.set(ptr::from_mut(object));
    }
    zv
}

#[php_impl]
impl TcpRequest {
    /// A request built by hand (tests, adapters).
    /// Parameter names are PHP's (camelCase) so named arguments match the documented API.
    #[php(defaults(state = "\"\""))]
    pub fn __construct(
        remoteAddr: PhpString,
        event: TcpEvent,
        body: PhpString,
        connectionUuid: PhpString,
        server: PhpString,
        state: Bytes<'_>,
    ) -> PhpResult<Self> {
        // The object being constructed is `$this` of the running call (ext-php-rs gives a
        // constructor only its arguments): its slots get the values, like promoted properties.
        let this = {
            let globals = ext_php_rs::zend::ExecutorGlobals::get();
            // SAFETY: during an internal call the current frame is that call's (the engine
            // pushes it before running the handler); it lives until the handler returns.
            unsafe { globals.current_execute_data.as_mut() }
                .and_then(|ex| ex.get_self())
                .map(ptr::from_mut)
        };
        // SAFETY: the pointer is the live `$this`, a `TcpRequest` object.
        let Some(this) = this.and_then(|this| unsafe { this.as_mut() }) else {
            return Err(PhpException::from_message(
                "could not find the request being built".to_owned(),
            ));
        };
        // SAFETY: every `TcpRequest` object has the six declared slots.
        if !is_undef(unsafe { &*this.properties_table.as_ptr() }) {
            // A second `__construct()` call on a built request, refused as PHP refuses it.
            return Err(PhpException::new(
                "Cannot modify readonly property Pier\\Tcp\\TcpRequest::$remoteAddr".to_owned(),
                0,
                ce::error(),
            ));
        }
        let values = [
            remoteAddr.0,
            event_case(event, &no_cases()),
            body.0,
            connectionUuid.0,
            server.0,
            string(state.0).0,
        ];
        // SAFETY: the slots were checked empty above.
        unsafe { fill_slots(this, values) };
        Ok(TcpRequest { tls: None })
    }

    /// The client's address.
    pub fn get_remote_address(self_: &mut ZendClassObject<TcpRequest>) -> PhpResult<PhpString> {
        slot_string(self_, REMOTE_ADDR)
    }

    /// What happened.
    pub fn get_event(self_: &mut ZendClassObject<TcpRequest>) -> PhpResult<EventObject> {
        slot_value(self_, EVENT).map(EventObject)
    }

    /// The packet (DATA, delimiter included); '' otherwise.
    pub fn get_body(self_: &mut ZendClassObject<TcpRequest>) -> PhpResult<PhpString> {
        slot_string(self_, BODY)
    }

    /// The connection's UUID.
    pub fn get_connection_uuid(self_: &mut ZendClassObject<TcpRequest>) -> PhpResult<PhpString> {
        slot_string(self_, CONNECTION_UUID)
    }

    /// The server's name.
    pub fn get_server(self_: &mut ZendClassObject<TcpRequest>) -> PhpResult<PhpString> {
        slot_string(self_, SERVER)
    }

    /// The connection state; '' when none.
    pub fn get_state(self_: &mut ZendClassObject<TcpRequest>) -> PhpResult<PhpString> {
        slot_string(self_, STATE)
    }

    /// What TLS negotiated; null for plaintext. Keys `version`, `cipher`, `sni`,
    /// `client_subject`, `client_sha256` (the last three null when absent).
    pub fn get_tls(&self) -> PhpResult<Option<ZBox<ZendHashTable>>> {
        let Some(tls) = &self.tls else {
            return Ok(None);
        };
        let mut array = ZendHashTable::new();
        let entries: [(&str, Option<&str>); 5] = [
            ("version", Some(&tls.version)),
            ("cipher", Some(&tls.cipher)),
            ("sni", tls.sni.as_deref()),
            ("client_subject", tls.client_subject.as_deref()),
            ("client_sha256", tls.client_sha256.as_deref()),
        ];
        for (key, value) in entries {
            array
                .insert(key, value.map(str::to_owned))
                .map_err(|e| PhpException::from_message(e.to_string()))?;
        }
        Ok(Some(array))
    }
}

/// The PHP strings of one connection's remote address, uuid and server name, kept with the
/// connection's decoded context in the session's memo ([`Kept`]), so that a connection's every
/// event shares three strings instead of allocating and copying them again. They belong to
/// exactly the context bytes of that memo entry, which go at the connection's CLOSE (or
/// STARTTLS); at request shutdown [`forget_connections`] drops them all.
#[derive(Debug)]
pub struct ConnectionStrings {
    /// `remoteAddr`.
    remote_addr: PhpString,
    /// `connectionUuid`.
    uuid: PhpString,
    /// `server`.
    server: PhpString,
}

impl Drop for ConnectionStrings {
    fn drop(&mut self) {
        if !REQUEST_LIVE.get() {
            // The request's memory, where the strings lived, is gone (only when request shutdown
            // could not reach the session): releasing them would touch freed memory.
            for s in [&mut self.remote_addr, &mut self.uuid, &mut self.server] {
                std::mem::forget(std::mem::replace(s, PhpString(Zval::new())));
            }
        }
    }
}

/// The relay session of this process, with each connection's PHP strings.
pub type PhpSession = Session<Option<ConnectionStrings>>;

thread_local! {
    /// Whether a request runs (set at request startup, cleared at its shutdown): PHP strings
    /// made in a request live in its memory.
    static REQUEST_LIVE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Request shutdown (RSHUTDOWN): drops the connections' strings, while the request's memory they
/// live in still exists.
///
/// # Safety
///
/// Called by PHP at request shutdown as `request_shutdown_func`; never call it yourself.
pub unsafe extern "C" fn forget_connections(_type: i32, _module_number: i32) -> i32 {
    // Busy only if a fatal error left a call unfinished: then ConnectionStrings' drop forgets
    // the strings instead.
    let session = SESSION.with(|slot| slot.try_borrow().ok().and_then(|s| s.clone()));
    if let Some(mut session) = session.as_ref().and_then(|s| s.try_borrow_mut().ok()) {
        session.forget_kept();
    }
    REQUEST_LIVE.set(false);
    0
}

/// `event`'s remote address, uuid and server as PHP strings, made once per connection: `kept`
/// is the connection's place for them.
fn connection_strings(
    event: &Event<'_>,
    kept: Kept<'_, Option<ConnectionStrings>>,
) -> (PhpString, PhpString, PhpString) {
    let fresh = || ConnectionStrings {
        remote_addr: string(event.remote_addr.as_bytes()),
        uuid: string(event.uuid.as_bytes()),
        server: string(event.server.as_bytes()),
    };
    let last = match kept {
        Kept::Entry(slot) => {
            let s = slot.get_or_insert_with(fresh);
            return (s.remote_addr.share(), s.uuid.share(), s.server.share());
        }
        // The connection's last event (CLOSE): its strings go with this request.
        Kept::Last(Some(s)) => s,
        Kept::Last(None) | Kept::None => fresh(),
    };
    (
        last.remote_addr.share(),
        last.uuid.share(),
        last.server.share(),
    )
}

/// TLS facts that outlive the relay buffer they were decoded from.
fn owned_tls(t: &TlsFacts<'_>) -> TlsFacts<'static> {
    let own = |s: &Option<std::borrow::Cow<'_, str>>| s.as_ref().map(|s| s.to_string().into());
    TlsFacts {
        version: t.version.to_string().into(),
        cipher: t.cipher.to_string().into(),
        sni: own(&t.sni),
        client_subject: own(&t.client_subject),
        client_sha256: own(&t.client_sha256),
    }
}

// ---------------------------------------------------------------------------------------------
// The per-event calls' own handlers

/// A PHP function's C handler (`zif_handler`).
type Handler = unsafe extern "C" fn(*mut ext_php_rs::zend::ExecuteData, *mut Zval);

/// The handler ext-php-rs generated for `TcpWorker::waitRequest()`.
static WAIT_REQUEST_GENERATED: std::sync::OnceLock<Handler> = std::sync::OnceLock::new();
/// The handler ext-php-rs generated for `TcpWorker::respond()`.
static RESPOND_GENERATED: std::sync::OnceLock<Handler> = std::sync::OnceLock::new();

/// Gives `waitRequest()` and `respond()`, the two calls of every event, handlers of their own.
///
/// ext-php-rs runs each generated method handler inside `run_handler`: a `zend_try` (a `setjmp`),
/// a `catch_unwind` in a second closure and its bailout-guard bookkeeping, ~170 instructions per
/// call, as much as the rest of `respond()`. These handlers catch panics once and call the same
/// Rust methods; anything but the plain call (another argument count or type) goes to the
/// generated handler, so argument errors and everything reflection shows stay ext-php-rs's.
///
/// No `zend_try`: the methods hold no `BailoutGuard`, the only thing ext-php-rs's try runs on a
/// bailout (a fatal error inside, e.g. the memory limit in an allocation) before re-raising it.
/// A bailout skips these Rust frames with or without it.
///
/// # Safety
///
/// `ce` must be `TcpWorker`'s registered entry and no PHP code may run concurrently.
unsafe fn install_event_handlers(ce: &ClassEntry) -> bool {
    // SAFETY: as the caller guarantees.
    unsafe {
        swap_handler(
            ce,
            "waitrequest",
            wait_request_handler,
            &WAIT_REQUEST_GENERATED,
        ) && swap_handler(ce, "respond", respond_handler, &RESPOND_GENERATED)
    }
}

/// Replaces the handler of method `name` (lower case) of `ce` by `fast`, keeping the old one in
/// `generated`. Whether the method was found.
///
/// # Safety
///
/// `ce` must be a registered class whose method `name` is internal, and no PHP code may run
/// concurrently.
unsafe fn swap_handler(
    ce: &ClassEntry,
    name: &str,
    fast: Handler,
    generated: &std::sync::OnceLock<Handler>,
) -> bool {
    let Some(entry) = ce.function_table.get(name) else {
        return false;
    };
    // SAFETY: a function table maps names to `zend_function*` stored as IS_PTR zvals; the
    // function is the class's own internal method, alive until shutdown.
    let Some(function) =
        (unsafe { (entry.value.ptr as *mut ext_php_rs::ffi::zend_function).as_mut() })
    else {
        return false;
    };
    // SAFETY: the method is internal (ext-php-rs registered it), so this is the variant.
    let internal = unsafe { &mut function.internal_function };
    let Some(original) = internal.handler else {
        return false;
    };
    // A second module startup in the same process (a SAPI restart) registers fresh methods with
    // the same generated handler.
    let _ = generated.set(original);
    internal.handler = Some(fast);
    true
}

/// Calls the generated handler kept in `generated`.
///
/// # Safety
///
/// The arguments must be the ones the engine passed to the handler calling this.
unsafe fn call_generated(
    generated: &std::sync::OnceLock<Handler>,
    ex: *mut ext_php_rs::zend::ExecuteData,
    rv: *mut Zval,
) {
    if let Some(handler) = generated.get() {
        // SAFETY: as the caller guarantees; it is the handler the engine would have called.
        unsafe { handler(ex, rv) }
    }
}

/// The number of arguments of a call (`ZEND_CALL_NUM_ARGS`).
fn num_args(ex: &ext_php_rs::zend::ExecuteData) -> u32 {
    // SAFETY: for a call frame, `This.u2` holds the number of arguments passed.
    unsafe { ex.This.u2.num_args }
}

/// Runs `call` and turns a panic into the exception ext-php-rs throws for one: a Rust panic never
/// unwinds into PHP.
fn catching_panics<R>(call: impl FnOnce() -> PhpResult<R>) -> PhpResult<R> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|payload| {
        let message = panic_message(payload.as_ref());
        Err(PhpException::new(
            format!("Rust panic: {message}"),
            0,
            ce::error(),
        ))
    })
}

/// The message a panic was raised with.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// `TcpWorker::waitRequest()`'s handler (see [`install_event_handlers`]).
unsafe extern "C" fn wait_request_handler(ex: *mut ext_php_rs::zend::ExecuteData, rv: *mut Zval) {
    // SAFETY: the engine passes its live call frame and return value.
    let (Some(frame), Some(retval)) = (unsafe { ex.as_mut() }, unsafe { rv.as_mut() }) else {
        return;
    };
    let this = match num_args(frame) {
        0 => worker_of(frame),
        _ => None,
    };
    let Some(this) = this else {
        // SAFETY: the engine's own arguments, passed on.
        return unsafe { call_generated(&WAIT_REQUEST_GENERATED, ex, rv) };
    };
    // SAFETY: the engine's frame and return value of this call.
    let spare = unsafe { spare_request(frame, rv) };
    match catching_panics(|| this.next_request(spare)) {
        Ok(Some(object)) => {
            // The return value takes the object's reference (what `set_object` does, without
            // first releasing the null the engine put there).
            retval.value.obj = object;
            retval.u1.type_info = ext_php_rs::flags::ZvalTypeFlags::ObjectEx.bits();
        }
        Ok(None) => retval.u1.type_info = ext_php_rs::flags::ZvalTypeFlags::Null.bits(),
        Err(e) => e.throw(),
    }
}

/// The `TcpWorker` that the method running in `frame` was called on (`$this`), if it is one:
/// what `ExecuteData::get_object` finds, with the class compared by address (it is final)
/// instead of ext-php-rs's generic lookup through the class hierarchy.
fn worker_of(frame: &ext_php_rs::zend::ExecuteData) -> Option<&TcpWorker> {
    // The type is `This`' low byte; the other bits are the call's flags.
    // SAFETY: `u1.type_info` is how every zval's type is read.
    if unsafe { frame.This.u1.type_info } & 0xff != ext_php_rs::ffi::IS_OBJECT {
        return None;
    }
    // SAFETY: `This` holds a live object for the call; one with `TcpWorker`'s class entry and
    // ext-php-rs's handlers for it is a `ZendClassObject<TcpWorker>`, alive during the call.
    unsafe {
        let object = frame.This.value.obj;
        if !is_object_of::<TcpWorker>(&*object) {
            return None;
        }
        (*class_object::<TcpWorker>(object)).obj.as_ref()
    }
}

/// `TcpWorker::respond()`'s handler (see [`install_event_handlers`]).
unsafe extern "C" fn respond_handler(ex: *mut ext_php_rs::zend::ExecuteData, rv: *mut Zval) {
    // SAFETY: the engine passes its live call frame and return value.
    let (Some(frame), Some(retval)) = (unsafe { ex.as_mut() }, unsafe { rv.as_mut() }) else {
        return;
    };
    let args = num_args(frame);
    // SAFETY: the frame holds `args` arguments; only those are read.
    let body = (1..=2)
        .contains(&args)
        .then(|| unsafe { frame.zend_call_arg(0) })
        .flatten()
        .and_then(|body| body.zend_str())
        .map(|body| ptr::from_ref(body.as_bytes()));
    let response = match args {
        1 => Some(ReplyKind::Write),
        // SAFETY: the second argument exists.
        _ => unsafe { frame.zend_call_arg(1) }.and_then(|r| response_case(r)),
    };
    let (Some(body), Some(response), Some(this)) = (body, response, worker_of(frame)) else {
        // SAFETY: the engine's own arguments, passed on.
        return unsafe { call_generated(&RESPOND_GENERATED, ex, rv) };
    };
    // SAFETY: the body is the caller's string argument, alive until the call returns.
    let body = unsafe { &*body };
    match catching_panics(|| this.answer(response, body)) {
        // `void`: the engine's null stays the return value.
        Ok(()) => retval.u1.type_info = ext_php_rs::flags::ZvalTypeFlags::Null.bits(),
        Err(e) => e.throw(),
    }
}

/// The reply kind of the `TcpResponse` case `value` holds, if it holds one. A case's backing value
/// is its reply's context on the wire, so it is read as one ([`ReplyKind::from_bytes`]): the four
/// names are spelled in the protocol and in the enum's declaration only, which
/// `tests::each_response_case_is_backed_by_its_reply_context` holds to the protocol's.
fn response_case(value: &Zval) -> Option<ReplyKind<'_>> {
    let case = value.object()?;
    if !ptr::eq(case.ce, TcpResponse::get_metadata().ce()) {
        return None;
    }
    // SAFETY: an enum case object's second declared property is its backing value.
    let backing = unsafe { &*case.properties_table.as_ptr().add(1) };
    match ReplyKind::from_bytes(backing.zend_str()?.as_bytes()) {
        ReplyKind::Unknown(_) => None,
        known => Some(known),
    }
}

// ---------------------------------------------------------------------------------------------
// TcpWorker

/// A `Pier\Worker` object held in a zval, so `getWorker()` declares its return type.
#[derive(Debug)]
pub struct WorkerObject(Zval);

zval_of_type!(WorkerObject, DataType::object("Pier\\Worker"));

/// The TCP plugin's worker loop: waitRequest(), then exactly one answer.
#[php_class]
#[php(name = "Pier\\Tcp\\TcpWorker")]
#[php(flags = ClassFlags::Final)]
#[derive(Debug)]
pub struct TcpWorker {
    /// The `Pier\Worker` object given to the constructor, returned as is by getWorker().
    worker: Zval,
    /// That worker's session.
    session: Rc<RefCell<PhpSession>>,
    /// The `TcpEvent` cases its requests hold, looked up once.
    cases: EventCases,
}

#[php_impl]
impl TcpWorker {
    /// Wraps a worker.
    pub fn __construct(worker: &mut ZendClassObject<Worker>) -> Self {
        let session = Rc::clone(&worker.session);
        let mut zv = Zval::new();
        zv.set_object(&mut worker.std);
        TcpWorker {
            worker: zv,
            session,
            cases: no_cases(),
        }
    }

    /// `new TcpWorker(Worker::create())`.
    pub fn create() -> PhpResult<TcpWorker> {
        let worker = Worker::create()?;
        let session = Rc::clone(&worker.session);
        let worker = ZendClassObject::new(worker).into_zval(false)?;
        Ok(TcpWorker {
            worker,
            session,
            cases: no_cases(),
        })
    }

    /// The worker given to the constructor (the same object).
    pub fn get_worker(&self) -> WorkerObject {
        WorkerObject(self.worker.shallow_clone())
    }

    /// The next event; answers pid handshakes itself; null when the server says stop or the
    /// relay closes (the script should then exit).
    pub fn wait_request(&self) -> PhpResult<Option<ZBox<ZendClassObject<TcpRequest>>>> {
        Ok(self.next_request(None)?.map(|object| {
            // SAFETY: without a spare the object is a new request, whose one reference this is.
            unsafe { ZBox::from_raw(class_object::<TcpRequest>(object)) }
        }))
    }

    /// Answers with `body` (WRITE by default, or as `response` says).
    #[php(defaults(response = TcpResponse::Respond))]
    pub fn respond(&self, body: BinarySlice<'_, u8>, response: TcpResponse) -> PhpResult<()> {
        self.answer(response.into(), &body)
    }

    /// Answers CONTINUE: write nothing, keep reading.
    pub fn read(&self) -> PhpResult<()> {
        self.session
            .borrow_mut()
            .reply(ReplyKind::Continue, b"")
            .map_err(throwable)
    }

    /// Answers CLOSE: close the connection without writing.
    pub fn close(&self) -> PhpResult<()> {
        self.session
            .borrow_mut()
            .reply(ReplyKind::Close, b"")
            .map_err(throwable)
    }

    /// Pier extension (`starttls` in `PIER_FEATURES`): the next answer is written in plaintext,
    /// then the server starts TLS on the connection. Nothing is sent when it throws.
    pub fn start_tls(&self) -> PhpResult<()> {
        self.session.borrow_mut().start_tls().map_err(throwable)
    }

    /// Attaches a connection state to the next answer of the pending request ('' clears it).
    /// Needs a Pier server (`PIER_FEATURES` lists `state`).
    pub fn set_state(&self, state: BinarySlice<'_, u8>) -> PhpResult<()> {
        self.session
            .borrow_mut()
            .set_state(&state)
            .map_err(throwable)
    }

    /// Sets the idle timeout of this request's connection in milliseconds (0 = none, null = the
    /// server's `idle_timeout`). Needs `idle_timeout` in `PIER_FEATURES` and a pending request.
    pub fn set_idle_timeout(&self, milliseconds: Option<i64>) -> PhpResult<()> {
        self.session
            .borrow_mut()
            .set_idle_timeout(milliseconds)
            .map_err(throwable)
    }

    /// Queues `data` on connection `uuid` (any connection, this one included). Server push:
    /// needs `push` in `PIER_FEATURES` and a pending request; goes out before the answer.
    pub fn send(&self, uuid: BinarySlice<'_, u8>, data: BinarySlice<'_, u8>) -> PhpResult<()> {
        self.session
            .borrow_mut()
            .send(&uuid, &data)
            .map_err(throwable)
    }

    /// Queues `data` on the members of `group`, or (null) on every connection of this request's
    /// server, except the uuids in `except`. Server push.
    #[php(defaults(group = None, except = Uuids::NONE))]
    pub fn broadcast(
        &self,
        data: BinarySlice<'_, u8>,
        group: Option<Bytes<'_>>,
        except: Uuids<'_>,
    ) -> PhpResult<()> {
        self.session
            .borrow_mut()
            .broadcast(&data, group.map(|g| g.0), except.0.as_deref())
            .map_err(throwable)
    }

    /// Adds connection `uuid` (null: this request's) to `group`. Server push.
    #[php(defaults(uuid = None))]
    pub fn join(&self, group: BinarySlice<'_, u8>, uuid: Option<Bytes<'_>>) -> PhpResult<()> {
        self.session
            .borrow_mut()
            .membership(true, &group, uuid.map(|u| u.0))
            .map_err(throwable)
    }

    /// Removes connection `uuid` (null: this request's) from `group`. Server push.
    #[php(defaults(uuid = None))]
    pub fn leave(&self, group: BinarySlice<'_, u8>, uuid: Option<Bytes<'_>>) -> PhpResult<()> {
        self.session
            .borrow_mut()
            .membership(false, &group, uuid.map(|u| u.0))
            .map_err(throwable)
    }

    /// Closes connection `uuid` after what it has queued; it gets its CLOSE event. Server push.
    pub fn disconnect(&self, uuid: BinarySlice<'_, u8>) -> PhpResult<()> {
        self.session
            .borrow_mut()
            .disconnect(&uuid)
            .map_err(throwable)
    }
}

impl TcpWorker {
    /// `waitRequest()`: the next event's request object (its one reference, to be handed to
    /// PHP), or None at the end. `spare` (see [`spare_request`]) is filled again when given and
    /// an event came; untouched otherwise (at the end or on an error).
    fn next_request(
        &self,
        spare: Option<Spare>,
    ) -> PhpResult<Option<*mut ext_php_rs::ffi::zend_object>> {
        let mut session = self.session.borrow_mut();
        match session.wait().map_err(throwable)? {
            Incoming::End => Ok(None),
            Incoming::Event(e, kept) => {
                let (remote_addr, connection_uuid, server) = connection_strings(&e, kept);
                let tls = e.tls.map(|t| Box::new(owned_tls(&t)));
                let event = event_case(e.event.into(), &self.cases);
                let state = string(e.state).0;
                Ok(Some(match spare {
                    // SAFETY: `spare_request` checked the spare, and nothing ran since.
                    Some(spare) => unsafe {
                        let values = [remote_addr.0, event, connection_uuid.0, server.0, state];
                        refill(spare, tls, values, e.body)
                    },
                    None => {
                        let values = [
                            remote_addr.0,
                            event,
                            string(e.body).0,
                            connection_uuid.0,
                            server.0,
                            state,
                        ];
                        let request = new_request(tls, values).into_raw();
                        // SAFETY: `into_raw` gives the live object, with its one reference.
                        unsafe { &raw mut (*request).std }
                    }
                }))
            }
        }
    }

    /// `respond()`: answers the pending request with `body`.
    fn answer(&self, kind: ReplyKind<'_>, body: &[u8]) -> PhpResult<()> {
        self.session
            .borrow_mut()
            .reply(kind, body)
            .map_err(throwable)
    }
}

// ---------------------------------------------------------------------------------------------
// Connections

/// Every live connection of a Pier server, over its RPC listener (`pier.*` methods).
#[php_class]
#[php(name = "Pier\\Tcp\\Connections")]
#[php(flags = ClassFlags::Final)]
#[derive(Debug)]
pub struct Connections {
    /// The RPC client (its socket opens on the first call).
    rpc: rpc::Connections,
}

#[php_impl]
impl Connections {
    /// The server at `address`: `tcp://host:port` or `unix:///path`, as `rpc.listen` says.
    pub fn __construct(address: BinarySlice<'_, u8>) -> PhpResult<Self> {
        let address = String::from_utf8_lossy(&address);
        Ok(Connections {
            rpc: rpc::Connections::new(&address).map_err(rpc_throwable)?,
        })
    }

    /// The server whose address `RR_RPC` holds.
    pub fn from_environment() -> PhpResult<Connections> {
        Ok(Connections {
            rpc: rpc::Connections::from_environment().map_err(rpc_throwable)?,
        })
    }

    /// `pier.Send`: false when no such connection is open.
    pub fn send(
        &mut self,
        uuid: BinarySlice<'_, u8>,
        data: BinarySlice<'_, u8>,
    ) -> PhpResult<bool> {
        self.rpc.send(&uuid, &data).map_err(rpc_throwable)
    }

    /// `pier.Broadcast`: how many connections it was queued on.
    #[php(defaults(group = None, server = None, except = Uuids::NONE))]
    pub fn broadcast(
        &mut self,
        data: BinarySlice<'_, u8>,
        group: Option<Bytes<'_>>,
        server: Option<Bytes<'_>>,
        except: Uuids<'_>,
    ) -> PhpResult<i64> {
        self.rpc
            .broadcast(&data, group.map(|g| g.0), server.map(|s| s.0), except.0)
            .map_err(rpc_throwable)
    }

    /// `pier.Join`: false when no such connection is open.
    pub fn join(
        &mut self,
        group: BinarySlice<'_, u8>,
        uuid: BinarySlice<'_, u8>,
    ) -> PhpResult<bool> {
        self.rpc
            .membership(true, &group, &uuid)
            .map_err(rpc_throwable)
    }

    /// `pier.Leave`: false when no such connection is open.
    pub fn leave(
        &mut self,
        group: BinarySlice<'_, u8>,
        uuid: BinarySlice<'_, u8>,
    ) -> PhpResult<bool> {
        self.rpc
            .membership(false, &group, &uuid)
            .map_err(rpc_throwable)
    }

    /// `pier.Close`: false when no such connection was open.
    pub fn close(&mut self, uuid: BinarySlice<'_, u8>) -> PhpResult<bool> {
        self.rpc.close(&uuid).map_err(rpc_throwable)
    }

    /// `pier.List`: `['total' => int, 'connections' => [...]]`, oldest first.
    #[php(defaults(server = None, group = None, offset = 0, limit = 100))]
    pub fn list(
        &mut self,
        server: Option<Bytes<'_>>,
        group: Option<Bytes<'_>>,
        offset: i64,
        limit: i64,
    ) -> PhpResult<ZBox<ZendHashTable>> {
        let page = self
            .rpc
            .list(server.map(|s| s.0), group.map(|g| g.0), offset, limit)
            .map_err(rpc_throwable)?;
        Ok(php_array_of(&page))
    }

    /// `pier.Info`: the connection, or null.
    pub fn info(&mut self, uuid: BinarySlice<'_, u8>) -> PhpResult<Option<ZBox<ZendHashTable>>> {
        match self.rpc.info(&uuid).map_err(rpc_throwable)? {
            Some(v) => Ok(Some(php_array_of(&v))),
            None => Ok(None),
        }
    }

    /// `pier.Count`.
    #[php(defaults(server = None, group = None))]
    pub fn count(&mut self, server: Option<Bytes<'_>>, group: Option<Bytes<'_>>) -> PhpResult<i64> {
        self.rpc
            .count(server.map(|s| s.0), group.map(|g| g.0))
            .map_err(rpc_throwable)
    }

    /// `pier.Groups`: `[['group' => string, 'members' => int], …]`, sorted by name.
    #[php(defaults(server = None))]
    pub fn groups(&mut self, server: Option<Bytes<'_>>) -> PhpResult<ZBox<ZendHashTable>> {
        let groups = self
            .rpc
            .groups(server.map(|s| s.0))
            .map_err(rpc_throwable)?;
        Ok(php_array_of(&groups))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ext_php_rs::enum_::Discriminant;

    #[test]
    fn each_response_case_is_backed_by_its_reply_context() {
        // The fast `respond()` handler reads a case's backing value as the wire's reply context;
        // the generated one converts the case with `From<TcpResponse>`: both must agree.
        let cases = <TcpResponse as RegisteredEnum>::CASES;
        assert_eq!(cases.len(), 4);
        for case in cases {
            let response = TcpResponse::from_name(case.name).expect("a declared case");
            let Some(Discriminant::String(backing)) = &case.discriminant else {
                panic!("{} has no string backing value", case.name);
            };
            let kind = ReplyKind::from(response);
            assert_eq!(kind.as_bytes(), backing.as_bytes(), "{}", case.name);
            assert_eq!(ReplyKind::from_bytes(backing.as_bytes()), kind);
            assert_eq!(
                response.stub_literal(),
                format!("\\Pier\\Tcp\\TcpResponse::{}", case.name)
            );
        }
    }

    #[test]
    fn each_event_case_is_backed_by_its_name_on_the_wire() {
        for case in <TcpEvent as RegisteredEnum>::CASES {
            let event = TcpEvent::from_name(case.name).expect("a declared case");
            let Some(Discriminant::String(backing)) = &case.discriminant else {
                panic!("{} has no string backing value", case.name);
            };
            let kind = EventKind::from_name(backing);
            assert_eq!(kind.as_str(), *backing, "{}", case.name);
            assert_eq!(TcpEvent::from(kind), event);
        }
    }

    #[test]
    fn a_panic_keeps_its_message() {
        let text = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(panic_message(text.as_ref()), "boom 7");
        let literal = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(literal.as_ref()), "plain");
        let other = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(other.as_ref()), "non-string panic payload");
    }
}
