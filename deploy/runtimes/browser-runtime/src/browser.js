// `$browser`, `$driver.By` (also `$selenium.By`) for scripted browser checks: evaluated
// by the browser runtime's engine `Extension` after the API runtime's prelude and before
// the check. Each call is a `$http` request to http://browser.invalid/v1, a name that never
// resolves, which the browser runtime answers from its DevTools session. Everything used
// here is captured before the check runs, so a script that replaces globals only
// confuses itself. The call site's stack is kept: a failing step reports the check's line.
(function () {
  'use strict';
  const post = $http.post;
  const parse = JSON.parse;
  const freeze = Object.freeze;
  const defineProperty = Object.defineProperty;
  const apply = Reflect.apply;
  const ownProperty = Object.prototype.hasOwnProperty;
  const hasOwn = (o, k) => apply(ownProperty, o, [k]);
  const ErrorCtor = Error;
  const TypeErrorCtor = TypeError;
  const Str = String;
  const Num = Number;
  const ENDPOINT = 'http://browser.invalid/v1';

  function call(op, args) {
    const site = new ErrorCtor();
    return post(ENDPOINT, { json: { op: op, args: args } }).then(function (r) {
      const answer = parse(r.body);
      if (answer.error) {
        const e = new ErrorCtor(answer.error.message);
        e.name = answer.error.name;
        e.stack = Str(site.stack);
        throw e;
      }
      return answer.value;
    });
  }

  function locator(using) {
    return function (value) {
      if (value === undefined || value === null) throw new TypeErrorCtor('By.' + using + '(value): value is required');
      return freeze({ using: using, value: Str(value) });
    };
  }
  const By = freeze({
    css: locator('css'),
    cssSelector: locator('css'),
    id: locator('id'),
    name: locator('name'),
    className: locator('className'),
    tagName: locator('tagName'),
    linkText: locator('linkText'),
    partialLinkText: locator('partialLinkText'),
    xpath: locator('xpath'),
  });
  function checked(by) {
    if (by === null || typeof by !== 'object' || !hasOwn(by, 'using') || !hasOwn(by, 'value')) {
      throw new TypeErrorCtor('a locator is required, e.g. $driver.By.css("#id")');
    }
    return { using: Str(by.using), value: Str(by.value) };
  }

  function element(handle) {
    return freeze({
      click: () => call('click', [handle]).then(() => undefined),
      sendKeys: function () {
        let text = '';
        for (let i = 0; i < arguments.length; i++) text += Str(arguments[i]);
        return call('sendKeys', [handle, text]).then(() => undefined);
      },
      clear: () => call('clear', [handle]).then(() => undefined),
      getText: () => call('getText', [handle]),
      getAttribute: (name) => call('getAttribute', [handle, Str(name)]),
      isDisplayed: () => call('isDisplayed', [handle]),
    });
  }

  const $browser = freeze({
    get: (url) => call('get', [Str(url)]).then(() => undefined),
    getTitle: () => call('getTitle', []),
    getCurrentUrl: () => call('getCurrentUrl', []),
    findElement: (by) => call('findElement', [checked(by)]).then(element),
    waitForAndFindElement: (by, timeoutMs) =>
      call('waitForAndFindElement', [checked(by), timeoutMs === undefined ? 5000 : Num(timeoutMs)]).then(element),
    takeScreenshot: () => call('takeScreenshot', []).then(() => undefined),
    sleep: (ms) => new Promise((resolve) => setTimeout(resolve, Num(ms) || 0)),
  });
  const $driver = freeze({ By: By });
  for (const [name, value] of [['$browser', $browser], ['$driver', $driver], ['$selenium', $driver]]) {
    defineProperty(globalThis, name, { value: value, writable: false, enumerable: false, configurable: false });
  }
})();
